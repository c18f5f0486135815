"""train-reward on the shared local Ray: DeepSpeed workers (ZeRO stages), checkpoints, time budget."""

from pathlib import Path

import pytest

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
