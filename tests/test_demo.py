"""`raypipe demo` end to end (all eight stages, tiny sizes), on the shared local Ray."""
import json

import pytest

from raypipe.config import load_config
from raypipe.demo import DEFAULT_CONFIG, DemoConfig, run_demo


@pytest.mark.slow
def test_demo_runs_end_to_end(ray_local, tmp_path, capsys):
    small = '["synth_train.pairs=32", "synth_val.pairs=16", "train.max_steps=4", "train.eval_every=2", ' \
            '"train.checkpoint_every=4", "train.batch_pairs=4", "train.cpus_per_worker=0.5"]'
    cfg = load_config(DemoConfig, DEFAULT_CONFIG, [
        "synth.pairs=12", "progress=false", f"reward_overrides={small}", "sample_prompts=4", "sample_k=2",
        "dpo_steps=2", 'dpo_overrides=["train.batch=1", "train.checkpoint_every=2"]', "eval_prompts=2",
        "latent_reward_steps=2", 'latent_reward_overrides=["train.batch=2"]', "guided_prompts=2"])
    report = run_demo(cfg, tmp_path / "demo")
    s = report["pairs"]
    assert s["rows"] == 12 and s["decoded"] == 12 and s["error_rows"] == 0
    assert s["frames_decoded"] == 12 * 2 * 8  # 16 frames at 8 fps sampled at 4 fps
    assert sum(s["labels"]["VQ"][k] for k in ("A", "B", "tie")) == 12
    assert json.loads((tmp_path / "demo" / "demo_summary.json").read_text())["pairs"]["rows"] == 12
    assert (tmp_path / "demo" / "config.yaml").exists()
    assert report["reward"]["steps"] == 4
    assert report["eval"]["n_rows"] == 16 and set(report["eval"]) >= {"VQ", "MQ", "TA", "errors"}
    assert (tmp_path / "demo" / "eval" / "accuracy_vs_epsilon.png").exists()
    assert report["relabel"]["rows"] == 12 and report["relabel"]["rows_ok"] == 12
    assert set(report["relabel"]["tie_epsilon"]) == {"VQ", "MQ", "TA"}  # ε* stored by training, used here
    assert all(0.0 <= v <= 1.0 for v in report["relabel_agreement"].values())
    # stages 6-8 from the repo's pretrained tiny generator
    sp = report["sample_pairs"]
    assert sp["samples"] == 8 and sp["pairs"] + sp["skipped_equal_reward"] == 4 and sp["error_samples"] == 0
    assert report["dpo"]["steps"] == 2 and report["dpo"]["error_rows"] == 0
    assert set(report["dpo_eval"]["reward_win_rate"]) >= {"VQ", "MQ", "TA"}
    assert (tmp_path / "demo" / "dpo" / "eval" / "grid.gif").exists()
    assert report["nrg"]["guided"] == report["nrg"]["guided"]  # a number (not NaN)
    assert len(list((tmp_path / "demo" / "nrg" / "guided" / "videos").glob("*.mp4"))) == 2
    out = capsys.readouterr().out
    assert "=== summary ===" in out and "Flow-DPO on" in out and "Flow-NRG" in out
