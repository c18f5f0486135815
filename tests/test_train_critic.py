"""train-critic on the shared local Ray: DeepSpeed workers, every training video consumed once per epoch, a
held-out report from generated answers, a final critic that loads and answers; bad configs refused early."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raypipe.config import ConfigError, load_config
from raypipe.recipes.train_critic import CriticTrainConfig

PRESET = Path(__file__).parent.parent / "configs" / "critic_tiny.yaml"
TINY = [
    "synth_train.pairs=12",
    "synth_val.pairs=4",
    "synth_train.frames=8",
    "synth_val.frames=8",
    "train.batch=3",
    "train.epochs=1",
    "train.eval_every=2",
    "train.eval_videos=2",
    "train.checkpoint_every=2",
    "train.max_minutes=null",
    "train.record_rows=true",
    "train.max_failures=0",
    "model.max_new_tokens=6",
    "data.sampling.min_pixels=3136",
    "data.rows_per_block=4",
    "progress=false",
]


def test_train_critic_end_to_end(ray_local, tmp_path):
    from raypipe.critic.model import Critic
    from raypipe.recipes.train_critic import run

    out = tmp_path / "critic"
    summary = run(load_config(CriticTrainConfig, PRESET, TINY + [f"out={out}"]))
    # 24 training videos over 2 workers x 3 videos: 4 steps per epoch
    assert summary["steps"] == 4
    metrics = json.loads((out / "metrics.json").read_text())
    for dim in ("VQ", "MQ", "TA"):
        report = metrics["val"][dim]
        assert report["n"] == 8  # every held-out video answered once per dimension, gathered over both ranks
        assert sum(sum(row.values()) for row in report["confusion"].values()) == 8
    assert (
        metrics["val"]["TA"]["reasons"]["videos_with_wrong_attributes"]
        + metrics["val"]["TA"]["reasons"]["videos_without"]
        == 8
    )
    assert len(metrics["examples"]) == 8 and all(isinstance(e["TA"], str) for e in metrics["examples"])
    curve = json.loads((out / "learning_curve.json").read_text())
    assert [p["step"] for p in curve] == [2, 4] and all(p["val"]["VQ"]["n"] == 4 for p in curve[:1])
    assert (out / "learning_curve.png").stat().st_size > 0
    ckpts = sorted(p for p in (out / "ray_results" / "train-critic").glob("checkpoint_*") if p.is_dir())
    consumed = json.loads((ckpts[-1] / "progress.json").read_text())["rows"]["0"]
    assert len(consumed) == len(set(consumed)) == 12 and set(consumed) <= set(range(24))  # rank 0's half, once each
    critic = Critic.from_pretrained(out / "final")
    assert critic.cfg.added_words == [] and "jitters" in critic.processor.tokenizer.get_vocab()
    import numpy as np

    answers = critic.answer([np.zeros((4, 56, 56, 3), np.uint8)], ["a red circle moving left"], ["MQ"])
    assert len(answers) == 1 and isinstance(answers[0], str)


def test_train_critic_refuses_bad_config_before_any_work(tmp_path):
    from raypipe.recipes.train_critic import run

    with pytest.raises(ConfigError, match="zero_stage must be 0 or 2"):
        run(load_config(CriticTrainConfig, PRESET, TINY + [f"out={tmp_path}/a", "train.zero_stage=3"]))
    with pytest.raises(ConfigError, match=r"no question for \['TA'\]"):
        run(load_config(CriticTrainConfig, PRESET, TINY + [f"out={tmp_path}/b", "model.questions={VQ: a, MQ: b}"]))
    (tmp_path / "bad.json").write_text('[{"video": "a.mp4", "conversations": []}]')
    with pytest.raises(ConfigError, match="conversations"):
        run(load_config(CriticTrainConfig, PRESET, TINY + [f"out={tmp_path}/c", f"data.manifest={tmp_path}/bad.json"]))
