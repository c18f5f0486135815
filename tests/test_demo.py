"""`raypipe demo` end to end (all nine stages, tiny sizes), on the shared local Ray."""

import dataclasses
import json

import pyarrow.parquet as pq
import pytest

from raypipe.config import load_config
from raypipe.recipes.demo import DEFAULT_CONFIG, DemoConfig
from raypipe.recipes.demo import run as run_demo


@pytest.mark.slow
def test_demo_runs_end_to_end(ray_local, critic_checkpoint, tmp_path, capsys):
    small = (
        '["synth_train.pairs=32", "synth_val.pairs=16", "train.max_steps=2", "train.eval_every=2", '
        '"train.checkpoint_every=2", "train.batch=4", "train.cpus_per_worker=0.5", '
        '"data.sampling.min_pixels=3136"]'
    )
    cfg = load_config(
        DemoConfig,
        DEFAULT_CONFIG,
        [
            "synth.pairs=12",
            "progress=false",
            f"reward_overrides={small}",
            "sample_prompts=4",
            "sample_k=2",
            "dpo_steps=2",
            'dpo_overrides=["train.batch=1", "train.checkpoint_every=2"]',
            "eval_prompts=2",
            "latent_reward_steps=2",
            'latent_reward_overrides=["train.batch=2"]',
            "guided_prompts=2",
            "baselines=[]",
            f"critic={critic_checkpoint}",  # train-critic itself: tests/test_train_critic.py
            "lift_steps=2",
            "lift_real=2",
        ],
    )  # the SFT/RWR baselines run the same stage-7 loop as Flow-DPO (each ~45 s here)
    report = run_demo(dataclasses.replace(cfg, out=str(tmp_path / "demo")))
    s = report["pairs"]
    assert s["rows"] == 12 and s["decoded"] == 12 and s["error_rows"] == 0
    assert s["frames_decoded"] == 12 * 2 * 8  # 16 frames at 8 fps sampled at 4 fps
    assert sum(s["labels"]["VQ"][k] for k in ("A", "B", "tie")) == 12
    assert json.loads((tmp_path / "demo" / "demo_summary.json").read_text())["pairs"]["rows"] == 12
    assert (tmp_path / "demo" / "config.yaml").exists()
    assert report["reward"]["steps"] == 2
    assert report["eval"]["n_rows"] == 16 and set(report["eval"]) >= {"VQ", "MQ", "TA", "errors"}
    assert (tmp_path / "demo" / "eval" / "accuracy_vs_epsilon.png").exists()
    assert report["relabel"]["rows"] == 12 and report["relabel"]["rows_ok"] == 12
    assert set(report["relabel"]["tie_epsilon"]) == {"VQ", "MQ", "TA"}  # ε* stored by training, used here
    assert all(0.0 <= v <= 1.0 for v in report["relabel_agreement"].values())
    # stages 6-8 from the repo's pretrained tiny generator
    sp = report["sample_pairs"]
    assert sp["samples"] == 8 and sp["pairs"] + sp["skipped_equal_reward"] == 4 and sp["error_samples"] == 0
    assert list(report["flow"]) == ["dpo"]
    for algo, r in report["flow"].items():
        assert r["train"]["steps"] == 2 and r["train"]["error_rows"] == 0 and r["train"]["algo"] == algo
        assert set(r["eval"]["reward_win_rate"]) >= {"VQ", "MQ", "TA"}
        assert (tmp_path / "demo" / "flow" / algo / "eval" / "grid.gif").exists()
    # Flow-NRG: unguided + the two default weight settings, same prompts
    runs = report["nrg"]["runs"]
    assert list(runs) == ["unguided", "guided_1", "guided_2"]
    assert [r["weights"] for r in runs.values()] == [{}, {"VQ": 1.0}, {"MQ": 0.5, "TA": 0.5}]
    for name, r in runs.items():
        assert len(list((tmp_path / "demo" / "nrg" / name / "videos").glob("*.mp4"))) == 2
        assert all(v == v for v in r["mean_latent"].values())  # numbers, not NaN
    assert set(runs["guided_1"]["oracle_win_rate"]) == {"VQ", "MQ", "TA"}
    # LiFT: the critic rated every stage-6 sample on every dimension (its answers on the critic's own test videos:
    # tests/test_critic_relabel.py); the report's mean weight is LiFT's map of those ratings; the weighted
    # fine-tuning ran on them plus the real videos, and was judged against the base
    lift = report["lift"]
    assert lift["samples"]["videos"] == 8 and lift["samples"]["error_rows"] == 0
    assert all(sum(lift["samples"]["ratings"][d].values()) == 8 for d in ("VQ", "MQ", "TA"))
    rated = pq.read_table(tmp_path / "demo" / "lift" / "rated").to_pylist()
    lift_map = {"Good": 0.9, "Normal": 0.2, "Bad": 0.05}
    by_hand = [sum(lift_map[r[f"rating_{d}"]] for d in ("VQ", "MQ", "TA")) / 3 for r in rated]
    assert [r["lift_weight"] for r in rated] == pytest.approx(by_hand)
    assert lift["samples"]["mean_lift_weight"] == pytest.approx(sum(by_hand) / 8, abs=1e-4)
    assert sum(lift["samples"]["oracle_ratings"]["VQ"].values()) == 8
    assert lift["train"]["steps"] == 2 and lift["train"]["row_counts"] == {
        "videos": 8,
        "kept": 8,
        "dropped_error": 0,
        "dropped_no_weight": 0,
        "source": "weights",
        "real": 2,
    }
    assert set(lift["eval"]["oracle_win_rate"]) == {"VQ", "MQ", "TA"}
    # the report links pictures that exist
    md = (tmp_path / "demo" / "report.md").read_text()
    for section in ("## VideoReward", "## Relabel", "## Aligning the generator", "## Flow-NRG", "| dpo |", "## LiFT"):
        assert section in md, section
    import re

    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert {"eval/accuracy_vs_epsilon.png", "reward_histograms.png", "nrg_side_by_side.gif"} <= set(links), links
    assert all((tmp_path / "demo" / link).exists() for link in links)
    out = capsys.readouterr().out
    assert "=== summary ===" in out and "generator alignment on" in out and "Flow-NRG" in out and "report:" in out
