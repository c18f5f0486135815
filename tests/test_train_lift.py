"""train-flow --algo lift: where the rows come from (ratings, a weight column, real videos; every video counted),
checked without Ray; then a tiny CogVideoX fully fine-tuned on Ray Train + DeepSpeed from a critic-relabel-shaped
table, whose result is a whole pipeline that loads and differs from the base."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raypipe.config import ConfigError, SynthConfig, load_config
from raypipe.recipes.train_flow import FlowTrainConfig, lift_rows
from raypipe.recipes.train_flow import run as run_train_flow
from raypipe.video.synth import make_synthpref


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("lift-synth")
    make_synthpref(root, SynthConfig(pairs=6, seed=3))
    return root


def _cfg(tmp_path, *overrides):
    return load_config(FlowTrainConfig, "configs/lift_tiny.yaml", [f"out={tmp_path}", "data.real_synth=0", *overrides])


def _rows(tmp_path, manifest, *overrides):
    return lift_rows(_cfg(tmp_path, f"data.manifest={manifest}", *overrides), str(manifest), tmp_path)


def _weight_table(synth, path):
    """A critic-relabel-shaped pointwise table: relative paths, one error row, one missing weight."""
    ratings = pq.read_table(synth / "ratings.parquet")
    n = ratings.num_rows
    table = pa.table(
        {
            "path": ratings.column("path"),
            "prompt": ratings.column("prompt"),
            "lift_weight": [0.9, 0.2, None] + [0.05] * (n - 3),
            "error": [None, "decode_failed"] + [None] * (n - 2),
        }
    )
    pq.write_table(table, path)
    return n


def test_lift_rows_from_each_source(synth, tmp_path):
    # ratings (SynthPref's ground-truth ratings stand in for human ones): weight = mean of the mapped ratings
    rows, counts = _rows(tmp_path, synth / "ratings.parquet", "data.source=ratings")
    ratings = pq.read_table(synth / "ratings.parquet").to_pylist()
    wm = {"Good": 0.9, "Normal": 0.2, "Bad": 0.05}
    expect = [sum(wm[r[d]] for d in ("VQ", "MQ", "TA")) / 3 for r in ratings]
    assert rows.column("weight").to_pylist() == pytest.approx(expect)
    assert counts == {"videos": 12, "kept": 12, "dropped_unrated": 0, "source": "ratings"}
    assert rows.column("uri").to_pylist()[0] == str(synth / ratings[0]["path"])
    # a weight column, picked automatically (source left at labels); paths resolved against the table's folder
    n = _weight_table(synth, synth / "rated.parquet")
    rows, counts = _rows(tmp_path, synth / "rated.parquet")
    assert counts == {"videos": n, "kept": n - 2, "dropped_error": 1, "dropped_no_weight": 1, "source": "weights"}
    assert rows.column("weight").to_pylist()[:2] == [0.9, 0.05]
    assert rows.column("uri").to_pylist()[0] == str(synth / ratings[0]["path"])
    # real videos join at train.real_weight; the auto pick falls back to ratings for a table without the column
    over = ("data.real_synth=3", "train.real_weight=0.5", "data.weight_column=score_MQ")
    rows, counts = _rows(tmp_path, synth / "ratings.parquet", *over)
    assert counts["source"] == "ratings" and counts["real"] == 3
    assert rows.column("is_real").to_pylist()[-3:] == [True] * 3 and rows.column("weight").to_pylist()[-1] == 0.5
    assert (tmp_path / "real" / "manifest.parquet").exists()
    with pytest.raises(ConfigError, match="ratings \\| weights"):
        _rows(tmp_path, synth / "ratings.parquet", "data.source=margins")
    with pytest.raises(ConfigError, match="no column 'Overall'"):
        _rows(tmp_path, synth / "rated.parquet", "data.source=weights", "data.weight_column=Overall")


@pytest.mark.slow
def test_tiny_cogvideox_full_lift_end_to_end(ray_local, synth, tmp_path):
    from raypipe.flow.families import load_family

    n = _weight_table(synth, synth / "rated_e2e.parquet")
    out = tmp_path / "lift"
    cfg = _cfg(
        out,
        "generator=null",
        "family=cogvideox",
        "lora.enabled=false",
        f"data.manifest={synth / 'rated_e2e.parquet'}",
        "data.real_synth=2",
        "train.batch=2",
        "train.max_steps=3",
        "train.checkpoint_every=3",
        "train.log_every=1",
        "train.lr=1e-3",
        "progress=false",
    )
    summary = run_train_flow(cfg)
    assert summary["steps"] == 3 and summary["rows"] == n - 2 + 2
    assert summary["row_counts"]["dropped_error"] == 1 and summary["row_counts"]["real"] == 2
    curve = json.loads((out / "curve.json").read_text())
    assert [p["step"] for p in curve] == [1, 2, 3] and all(0 < p["mean_weight"] <= 0.9 for p in curve)
    tuned, base = load_family(out / "final"), load_family(summary["generator"])
    assert type(tuned).__name__ == "CogVideoXFamily"
    z, s = torch.randn(1, 4, 3, 8, 8), torch.tensor([0.5])
    text = base.encode_prompts(["a red circle moving left"])
    assert (tuned.velocity(z, s, text) - base.velocity(z, s, text)).abs().max() > 0
