"""train-reward on the shared local Ray: DeepSpeed workers (ZeRO stages), checkpoints, time budget."""

from pathlib import Path

import pytest
import torch

from raypipe.config import load_config
from raypipe.recipes.train_reward import RewardTrainConfig

TINY = [
    "synth_train.pairs=48",
    "synth_val.pairs=16",
    "train.batch=2",
    "train.epochs=2",
    "train.checkpoint_every=4",
    "train.eval_every=4",
    "train.cpus_per_worker=0.5",
    "progress=false",
    "data.rows_per_block=4",
    "train.record_rows=true",
    "train.lr=1e-3",
    "data.sampling.min_pixels=3136",
]  # 56 px: the preset's 112-px view is for accuracy, not for tests


# The killed-worker resume test runs on a three-node cluster: tests/test_multinode.py.


@pytest.mark.slow
def test_zero3_trains_and_saves(ray_local, tmp_path):
    from raypipe.recipes.train_reward import run as run_train_reward
    from raypipe.reward.model import VideoReward

    out = tmp_path / "z3"
    cfg = load_config(
        RewardTrainConfig,
        Path(__file__).parent.parent / "configs" / "reward_tiny.yaml",
        TINY + [f"out={out}", "train.zero_stage=3", "train.max_steps=4", "train.max_failures=0"],
    )
    summary = run_train_reward(cfg)
    assert summary["steps"] == 4
    assert summary["frame_cache_s"] is not None  # the tiny preset decodes its pairs once (data.cache_frames)
    model = VideoReward.from_pretrained(out / "final")
    lora_merged = model.backbone.model.language_model.layers[0].self_attn.q_proj.weight
    assert lora_merged.numel() > 0 and torch.isfinite(lora_merged).all()  # gathered, not size-0 shards


@pytest.mark.parametrize(
    "weights, match",
    [("{XX: 1}", "unknown: \\['XX'\\]"), ("{TA: -1}", "TA': -1"), ("{VQ: 0, MQ: 0, TA: 0}", "not all 0")],
)
def test_bad_dimension_weights_are_refused_before_any_work(tmp_path, weights, match):
    from raypipe.recipes.train_reward import run as run_train_reward

    cfg = load_config(
        RewardTrainConfig,
        Path(__file__).parent.parent / "configs" / "reward_tiny.yaml",
        TINY + [f"out={tmp_path / 'run'}", f"train.dim_weights={weights}"],
    )
    with pytest.raises(ValueError, match=match):
        run_train_reward(cfg)
    assert not (tmp_path / "run" / "data").exists()  # refused before synthesising or decoding anything
