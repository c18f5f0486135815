"""sample-pairs: best vs worst per prompt by the scalarised reward (hand-worked), and the job end to end on the
test Ray (tiny generator, tiny reward checkpoint), its pairs read by train-flow as relabel output."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raypipe.config import ClipConfig
from raypipe.recipes.sample_pairs import SamplePairsConfig, best_vs_worst
from raypipe.recipes.sample_pairs import run as run_sample_pairs

DIMS = ["VQ", "MQ", "TA"]


def test_best_vs_worst_by_hand():
    # prompt 0: r = 1*VQ + 2*MQ over norm_ -> samples 0: 1+0=1, 1: 0+2*2=4, 2: error (ignored, its r would be 9)
    # prompt 1: one scored sample -> skipped; prompt 2: equal rewards -> skipped
    table = pa.table(
        {
            "uri": ["a", "b", "c", "d", "e", "f", "g"],
            "prompt": ["p0", "p0", "p0", "p1", "p1", "p2", "p2"],
            "prompt_id": [0, 0, 0, 1, 1, 2, 2],
            "error": [None, None, "corrupt", None, "corrupt", None, None],
            "norm_VQ": [1.0, 0.0, 9.0, 1.0, None, 0.5, 0.5],
            "norm_MQ": [0.0, 2.0, 0.0, 0.0, None, 0.0, 0.0],
            "norm_TA": [5.0, -5.0, 0.0, 0.0, None, 1.0, 2.0],
            "score_VQ": [0.1, 0.2, 0.3, 0.4, None, 0.6, 0.7],
            "score_MQ": [1.0, 3.0, 0.0, 0.0, None, 0.0, 0.0],
            "score_TA": [0.0, 0.0, 0.0, 0.0, None, 0.0, 0.0],
        }
    )
    pairs, counts = best_vs_worst(table, DIMS, {"VQ": 1.0, "MQ": 2.0})
    assert pairs.column("uri_A").to_pylist() == ["b"] and pairs.column("uri_B").to_pylist() == ["a"]
    assert pairs.column("margin_MQ").to_pylist() == [2.0] and pairs.column("model_VQ").to_pylist() == ["A"]
    assert pairs.column("r_gap").to_pylist() == [3.0]
    assert counts == {
        "prompts": 3,
        "pairs": 1,
        "skipped_fewer_than_2_scored": 1,
        "skipped_equal_reward": 1,
        "error_samples": 2,
        "scalarised_on": "norm",
        "mean_r_gap": 3.0,
    }
    with pytest.raises(Exception, match="unknown dimensions"):
        best_vs_worst(table, DIMS, {"XX": 1.0})


@pytest.mark.slow
def test_sample_pairs_end_to_end(ray_local, tmp_path, reward_checkpoint):
    from raypipe.flow.pairs import training_rows
    from raypipe.flow.wan_build import TinyWanConfig, make_tiny_wan

    wan = make_tiny_wan(tmp_path / "wan", TinyWanConfig(), seed=0)
    cfg = SamplePairsConfig(
        generator=str(wan),
        reward=reward_checkpoint,
        prompts="3",
        k=2,
        steps=2,
        clip=ClipConfig(frames=9, height=16, width=16),
        weights={"MQ": 1.0},
        out=str(tmp_path / "sp"),
        progress=False,
    )
    summary = run_sample_pairs(cfg)
    assert summary["samples"] == 6
    assert summary["pairs"] + summary["skipped_fewer_than_2_scored"] + summary["skipped_equal_reward"] == 3
    pairs = pq.read_table(str(tmp_path / "sp" / "pairs"))
    assert pairs.num_rows == summary["pairs"] >= 1
    rows, counts = training_rows(pairs, "dpo", "margins", {"MQ": 1.0})
    assert counts["pairs"] == pairs.num_rows  # best beats worst on the weighted margin by construction
    assert json.loads((tmp_path / "sp" / "summary.json").read_text())["k"] == 2
