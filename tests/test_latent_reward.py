"""train-latent-reward: labels from manifests and relabel output, the shared-noise pair, accuracy per t bucket
against a hand count, and the job end to end on the test Ray (tiny random generator)."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from raypipe.nrg.training import bucket_accuracy, labels_of, noisy_pair, pair_labels, split_rows
from raypipe.recipes.train_latent_reward import LatentRewardConfig
from raypipe.recipes.train_latent_reward import run as run_train_latent_reward

DIMS = ["VQ", "MQ", "TA"]


def _relabel_like(n=6):
    return pa.table(
        {
            "row_id": list(range(n)),
            "uri_A": [f"a{i}.mp4" for i in range(n)],
            "uri_B": [f"b{i}.mp4" for i in range(n)],
            "prompt": ["p"] * n,
            "error": [None] * (n - 1) + ["missing"],
            **{f"model_{d}": ["A", "B", "same", "A", "B", None] for d in DIMS},
            **{f"y_{d}": pa.array([1, 1, 1, 1, 1, None], pa.int8()) for d in DIMS},
        }
    )


def test_pair_labels_from_relabel_and_manifest():
    table = _relabel_like()
    rows, source = pair_labels(table, DIMS, "auto")
    assert source == "model"
    assert rows.column("y_TA").to_pylist() == [1, -1, 0, 1, -1, None]
    assert rows.column("input_error").to_pylist()[-1] == "missing"
    rows, source = pair_labels(table.drop_columns([f"model_{d}" for d in DIMS]), DIMS, "auto")
    assert source == "manifest" and rows.column("y_VQ").to_pylist() == [1, 1, 1, 1, 1, None]
    y, mask = labels_of(rows, DIMS)
    assert y.shape == (6, 3) and mask[:, 0].tolist() == [True] * 5 + [False]
    with pytest.raises(Exception, match="model_<DIM>"):
        pair_labels(table.drop_columns([f"model_{d}" for d in DIMS]), DIMS, "model")


def test_split_rows_is_deterministic_disjoint_and_complete():
    rows = pa.table({"row_id": list(range(40))})
    tr, va = split_rows(rows, 0.25, seed=3)
    tr2, va2 = split_rows(rows, 0.25, seed=3)
    assert va.num_rows == 10 and tr.num_rows == 30
    assert va.column("row_id").to_pylist() == va2.column("row_id").to_pylist()
    assert sorted(tr.column("row_id").to_pylist() + va.column("row_id").to_pylist()) == list(range(40))


def test_noisy_pair_shares_eps_and_t():
    z_a, z_b, eps = torch.randn(3, 2, 1, 2, 2), torch.randn(3, 2, 1, 2, 2), torch.randn(3, 2, 1, 2, 2)
    t = torch.tensor([0.0, 0.5, 1.0])
    x_a, x_b = noisy_pair(z_a, z_b, t, eps)
    # x_t = (1 - t) z + t eps: the difference of the pair keeps only (1 - t)(z_A - z_B)
    torch.testing.assert_close(x_a - x_b, (1 - t).view(-1, 1, 1, 1, 1) * (z_a - z_b))
    torch.testing.assert_close(x_a[2], eps[2])


def _tensor(values):
    from ray.data.extensions import ArrowTensorArray

    return ArrowTensorArray.from_numpy(np.ascontiguousarray(values, np.float32))


class MeanReward(torch.nn.Module):
    """r_d = mean of latent channel d (ignores t and text) — a model whose accuracy can be counted by hand."""

    def forward(self, x, t, text):
        return x.mean(dim=(2, 3, 4))[:, :3]


def test_bucket_accuracy_matches_a_hand_count():
    # At t -> 0 the noisy pair keeps the clean difference: accuracy = share of labels that agree with the sign
    # of the clean channel-mean difference. Pairs: A brighter on every channel by 1 (big vs the noise at small t).
    n = 8
    z_b = np.zeros((n, 3, 1, 2, 2), np.float32)
    z_a = z_b + 1.0
    y = {"VQ": [1] * n, "MQ": [-1] * n, "TA": [1, 1, 1, 1, -1, -1, 0, None]}
    table = pa.table(
        {
            "latents_A": _tensor(z_a),
            "latents_B": _tensor(z_b),
            "text": _tensor(np.zeros((n, 1, 1))),
            **{f"y_{d}": pa.array(v, pa.int8()) for d, v in y.items()},
            "error": pa.array([None] * n, pa.string()),
        }
    )
    out = bucket_accuracy(MeanReward(), table, DIMS, draws=3, buckets=(0.0, 0.01, 1.0))
    low = "[0,0.01)"
    assert out["VQ"][low] == 1.0 and out["MQ"][low] == 0.0
    assert out["TA"][low] == pytest.approx(4 / 6)  # 6 decisive labels, 4 agree; the tie and the None are out
    assert out["n_pairs"] == n


@pytest.mark.slow
def test_train_latent_reward_end_to_end(ray_local, tmp_path):
    """Image-to-video on a tiny Wan2.2 TI2V (the demo runs the text-to-video case): SynthPref pairs sharing a first
    frame, which conditions the reward (packed into the cached prompts)."""
    from raypipe.config import load_config
    from raypipe.nrg.model import LatentReward

    ti2v = ["tiny.z_dim=6", "tiny.vae_is_residual=true", "tiny.vae_patch_size=2", "tiny.vae_decoder_base_dim=12"]

    cfg = load_config(
        LatentRewardConfig,
        None,
        [
            f"out={tmp_path / 'lr'}",
            "synth.pairs=20",
            "synth.seed=5",
            "clip.frames=5",
            "clip.height=16",
            "clip.width=16",
            "k_blocks=1",
            "train.batch=4",
            "train.epochs=2",
            "train.checkpoint_every=4",
            "train.log_every=2",
            "data.val_fraction=0.2",
            "eval_draws=1",
            "progress=false",
            *ti2v,
            "tiny.expand_timesteps=true",
            "synth.i2v=true",
            "data.image=first_frame",
        ],
    )
    summary = run_train_latent_reward(cfg)
    assert summary["train_pairs"] == 16 and summary["val_pairs"] == 4
    assert summary["steps"] == 2 * (16 // 8)
    assert summary["error_rows"] == 0
    metrics = json.loads((tmp_path / "lr" / "metrics.json").read_text())
    assert set(metrics["TA"]) == {"[0,0.25)", "[0.25,0.5)", "[0.5,0.75)", "[0.75,1)"}
    assert all(v is None or 0.0 <= v <= 1.0 for d in DIMS for v in metrics[d].values())
    model = LatentReward.from_pretrained(tmp_path / "lr" / "final")
    assert model.dims == tuple(DIMS) and model.k_blocks == 1 and model.meta["noise"] == "uniform"
    assert model.text_rows == 16  # the tiny generator's prompt rows: the cached prompts carry an image beyond them
    import pyarrow.parquet as pq

    from raypipe.data.tables import tensor_of

    assert tensor_of(pq.read_table(tmp_path / "lr" / "latents" / "train"), "text").shape[1] > 16
    assert (tmp_path / "lr" / "accuracy_by_t.png").exists()
    assert list((tmp_path / "lr" / "tensorboard").iterdir())


def test_refusals_before_any_work(tmp_path):
    """An unknown tiny family, and a conditioning image for a text-to-video generator (HunyuanVideo here; every
    family has a trunk: tests/test_latent_reward_families.py)."""
    from raypipe.config import ConfigError, load_config
    from raypipe.flow.families import make_tiny_generator

    hunyuan = make_tiny_generator("hunyuan", tmp_path / "hy")
    overrides = [f"out={tmp_path / 'lr'}", f"generator={hunyuan}", "data.image=first_frame", "synth.pairs=4"]
    cfg = load_config(LatentRewardConfig, None, [*overrides, "progress=false"])
    with pytest.raises(ConfigError, match="text-to-video only"):
        run_train_latent_reward(cfg)
    assert not (tmp_path / "lr" / "data").exists()
    with pytest.raises(ConfigError, match="family must be one of"):
        run_train_latent_reward(load_config(LatentRewardConfig, None, [f"out={tmp_path}", "family=sora"]))
