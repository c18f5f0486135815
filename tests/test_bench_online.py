"""bench online's report on constructed runs: win rates and claims from per-prompt outcomes (against a hand count),
the guard replayed on a recorded series, the overlap speedup from round times; its CLI parses."""

import pytest

from raypipe.bench.cli import bench_args
from raypipe.bench.online import guard_replay, markdown, online_intervals, overlap_speedup


def _run(vq, round_s=(2.0, 1.0, 1.0, 1.0)):
    """One arm's seed: per-prompt outcomes over the base (VQ as given, MQ/TA all ties), both judges alike."""
    both = {"VQ": list(vq), "MQ": [0.5] * len(vq), "TA": [0.5] * len(vq)}
    return {
        "train": {"round_s": list(round_s), "scored_samples": 16, "rounds": 4, "time_s": {"round": 1.0}},
        "outcomes": {"oracle": both, "reward": both},
    }


def test_intervals_claims_and_markdown():
    better = [1.0] * 30 + [0.0] * 2  # online wins 30 of 32 prompts over the base
    worse = [0.0] * 28 + [1.0] * 4
    runs = {
        "offline_dpo": {0: _run(worse), 1: _run(worse)},
        "online_dpo": {0: _run(better), 1: _run(better)},
    }
    report = online_intervals(runs)
    win = report["win_rate"]["online_dpo"]["oracle"]["VQ"]
    assert win["mean"] == pytest.approx(30 / 32) and win["n"] == 64 and win["decisive"] == 64
    assert win["low"] < 30 / 32 < win["high"]
    claims = {c["claim"]: c for c in report["claims"]}
    assert claims["online_dpo beats the base on VQ by the oracle"]["verdict"] == "holds"
    assert claims["offline_dpo beats the base on VQ by the oracle"]["verdict"] == "contradicted"
    diff = claims["online_dpo beats offline_dpo on VQ by the oracle"]
    # per prompt: online − offline = 1 − 0 on 28 prompts, 1 − 1 on 2, 0 − 1 on 2: mean 26/32
    assert diff["ci"]["mean"] == pytest.approx(26 / 32) and diff["verdict"] == "holds"
    md = markdown({"samples": 16, "seeds": [0, 1], "eval_prompts": 32, "runs": runs, **report, "overlap": None})
    assert "| online_dpo | " in md and "holds" in md and "ties as ½" in md


def test_guard_replay_and_overlap_speedup():
    rounds = [
        {"weighted_mean": w, "oracle_mean": {"VQ": j}}
        for w, j in [(0.1, 0.5), (0.2, 0.6), (0.3, 0.55), (0.4, 0.5), (0.5, 0.45), (0.6, 0.4)]
    ]
    # changes: (+, +), (+, −), (+, −), (+, −): three in a row after round 4 -> stop there, keep the judge's best (1)
    assert guard_replay(rounds, 3) == {"m": 3, "would_stop_after": 4, "would_keep": 1}
    assert guard_replay(rounds[:4], 3)["would_stop_after"] is None
    runs = {"grpo": {0: _run([1.0], (9.0, 4.0, 4.0, 5.0))}, "grpo_overlap": {0: _run([1.0], (9.0, 2.0, 3.0, 2.0))}}
    o = overlap_speedup(runs, 0)
    assert o["sync_round_s"] == 4.0 and o["overlap_round_s"] == 2.0 and o["speedup"] == 2.0  # medians, round 0 out
    assert o["rounds_per_hour"] == {"sync": 900.0, "overlap": 1800.0}
    assert overlap_speedup({"grpo": runs["grpo"]}, 0) is None


def test_cli_parses():
    args = bench_args("online", ["--out", "x", "--budget", "full", "--seeds", "3,4", "train.lr=1e-5"])
    assert args.budget == "full" and args.seeds == "3,4" and args.overrides == ["train.lr=1e-5"]
    assert args.k == 4 and args.samples is None and args.prompts_per_round == 4


def test_arms_and_grpo_lr(tmp_path):
    from raypipe.bench.online import run_online_bench

    args = bench_args("online", ["--out", str(tmp_path), "--arms", "offline_dpo,grpo", "--grpo-lr", "1e-3"])
    assert args.arms == "offline_dpo,grpo" and args.grpo_lr == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="--arms must name some of"):  # before any training or Ray
        run_online_bench(bench_args("online", ["--out", str(tmp_path), "--arms", "grpo,ppo"]))
    md = markdown(
        {
            "samples": 16,
            "seeds": [0],
            "eval_prompts": 32,
            "runs": {},
            "lr": {"online_dpo": [1e-4], "grpo": [1e-3, 2e-3]},
            "overlap": None,
        }
    )
    assert "Learning rates: online_dpo 0.0001, grpo 0.001/0.002." in md


def test_a_run_folder_at_another_lr_is_refused_and_unasked_arms_are_only_read(tmp_path):
    from raypipe.bench.online import _finished, _same_lr

    _same_lr(tmp_path / "config.yaml", 1e-3)  # nothing there yet: a new run
    (tmp_path / "config.yaml").write_text("train:\n  lr: 0.0001\n")
    _same_lr(tmp_path / "config.yaml", 1e-4)
    with pytest.raises(ValueError, match=r"trained at train.lr=0.0001, this run asks 0.001"):
        _same_lr(tmp_path / "config.yaml", 1e-3)
    for f in ["summary.json", "rounds.jsonl"]:
        (tmp_path / f).write_text("{}")
    assert not _finished("grpo", tmp_path)  # trained but not evaluated: not read as finished
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "report.json").write_text("{}")
    assert _finished("grpo", tmp_path) and not _finished("offline_dpo", tmp_path)
