"""Pure pieces of the reward worker loop (no Ray): batch -> inputs/targets, losses wired right, DS config."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from raypipe.config import SamplingConfig
from raypipe.distributed.decode import decode_pairs_block
from raypipe.distributed.trainer import deepspeed_config
from raypipe.recipes.train_reward import TrainSettings
from raypipe.reward.losses import btt_loss, regression_loss
from raypipe.reward.training import batch_loss as _loss
from raypipe.reward.training import pairs_to_inputs, validation_metrics


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from raypipe.reward.model import RewardModelConfig, VideoReward

    torch.manual_seed(0)
    return VideoReward.build(RewardModelConfig(), tiny_dir=tmp_path_factory.mktemp("bb") / "b")


def _batch(make_mp4, tmp_path):
    a, b = make_mp4("a.mp4", seed=1), make_mp4("b.mp4", seed=2)
    rows = pa.table(
        {
            "uri_A": [a, a, str(tmp_path / "missing.mp4")],
            "uri_B": [b, b, b],
            "prompt": ["a red circle moving left", "a blue square", "x"],
            "y_VQ": pa.array([1, -1, 1], pa.int8()),
            "y_MQ": pa.array([0, None, 1], pa.int8()),
            "y_TA": pa.array([None, 1, 0], pa.int8()),
            "MOS_A_VQ": [4.0, 2.0, 1.0],
            "MOS_B_VQ": [1.5, None, 1.0],
        }
    )
    return decode_pairs_block(rows, SamplingConfig(fps=4, max_frames=16))


def test_pairs_to_inputs_targets_and_error_rows(tiny, make_mp4, tmp_path):
    inputs, targets, n_err = pairs_to_inputs(
        _batch(make_mp4, tmp_path), tiny.processor, ["VQ", "MQ", "TA"], with_mos=True
    )
    assert n_err == 1  # the row with a missing video is skipped, not trained on
    assert targets["y"].tolist() == [[1, 0, 0], [-1, 0, 1]]
    assert targets["mask"].tolist() == [[True, True, False], [True, False, True]]
    assert inputs["input_ids"].shape[0] == 4  # A rows then B rows
    assert targets["mos"][:, 0].tolist() == [4.0, 2.0, 1.5, 0.0]
    assert targets["mos_mask"][:, 0].tolist() == [True, True, True, False]
    assert not targets["mos_mask"][:, 1:].any()  # no MOS columns for MQ/TA


def test_loss_wiring_matches_the_library(tiny, make_mp4, tmp_path):
    inputs, targets, _ = pairs_to_inputs(_batch(make_mp4, tmp_path), tiny.processor, ["VQ", "MQ", "TA"], with_mos=True)
    rewards = torch.randn(4, 3)
    loss, _ = _loss("btt", rewards, targets, 5.0, "cpu")
    ref, _ = btt_loss(rewards[:2], rewards[2:], targets["y"], targets["mask"], 5.0)
    assert torch.equal(loss, ref)
    loss, _ = _loss("regression", rewards, targets, 5.0, "cpu")
    keep = targets["mos_mask"]
    manual = ((rewards - (targets["mos"] - 3)) ** 2)[keep].mean()
    torch.testing.assert_close(loss, manual)
    torch.testing.assert_close(loss, regression_loss(rewards, targets["mos"], keep)[0])


def test_deepspeed_config():
    t = TrainSettings(zero_stage=3, batch=4, lr=1e-3, warmup_ratio=0.1)
    cfg = deepspeed_config(t, total_steps=200, bf16=False)
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["train_micro_batch_size_per_gpu"] == 4
    assert cfg["optimizer"]["params"]["torch_adam"] is True and cfg["optimizer"]["params"]["lr"] == 1e-3
    assert cfg["scheduler"]["params"]["warmup_num_steps"] == 20 and cfg["bf16"]["enabled"] is False


def test_validation_metrics_use_only_labelled_rows():
    margins = np.array([[0.5, 1.0], [-0.2, 0.0], [0.1, -3.0]])
    labels = np.array([[1, 1], [-1, 0], [0, 1]])
    masks = np.array([[1, 1], [1, 0], [0, 1]])
    out = validation_metrics(margins, labels, masks, ["VQ", "MQ"])
    assert out["VQ"]["n"] == 2 and out["VQ"]["acc_without_ties"] == 1.0
    assert out["MQ"]["n"] == 2 and out["MQ"]["acc_without_ties"] == 0.5
