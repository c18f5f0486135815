"""Error bars of the benches: the t-interval by hand, the paired difference, and the LiFT bench's verdicts."""

import math

import numpy as np
import pytest

from raypipe.bench.lift import critic_intervals, findings, finetune_intervals, markdown
from raypipe.bench.stats import bootstrap_means, excludes, fmt, mean_ci, outcomes, paired_ci, verdict, win_rate_ci


def test_mean_ci_by_hand():
    ci = mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t_{0.975, 2} · s / √n, s = 1
    assert ci["mean"] == 2.0 and ci["n"] == 3
    assert ci["low"] == pytest.approx(2 - half) and ci["high"] == pytest.approx(2 + half)
    one = mean_ci([0.7, None, float("nan")])
    assert one["n"] == 1 and one["low"] is None and fmt(one) == "0.70"
    assert excludes(one, 0.5) == "no interval"
    d = paired_ci([0.6, 0.7, 0.8], [0.5, 0.5, 0.5])  # differences 0.1, 0.2, 0.3: half-width 4.30·0.1/√3 = 0.25
    assert d["mean"] == pytest.approx(0.2) and excludes(d, 0.0) == "overlaps"
    assert excludes(paired_ci([0.6, 0.62, 0.61], [0.5, 0.5, 0.5]), 0.0) == "above"
    assert excludes(mean_ci([0.4, 0.6]), 0.5) == "overlaps" and excludes(mean_ci([0.1, 0.2, 0.15]), 0.5) == "below"


def test_lift_findings_say_what_holds():
    hold, flat = mean_ci([0.7, 0.72, 0.71]), mean_ci([0.3, 0.7, 0.5])
    zero_up, zero_flat = mean_ci([0.1, 0.12, 0.11]), mean_ci([-0.1, 0.1, 0.0])
    report = {
        "seeds": [0, 1, 2],
        "critic": {
            "accuracy": {
                "reasons": {d: hold for d in ("VQ", "MQ", "TA")},
                "score_only": {d: flat for d in ("VQ", "MQ", "TA")},
            },
            "reasons_minus_score_only": {"VQ": zero_up, "MQ": zero_flat, "TA": zero_flat},
            "runs": {
                "reasons": {
                    s: {"ta_reasons": {"names_wrong_attributes": e, "names_some_wrong_attribute": o}}
                    for s, e, o in ((0, 0.1, 0.4), (1, 0.2, 0.5), (2, 0.3, 0.6))
                }
            },
        },
        "finetune": {
            "win_rate": {"lift": {j: {"VQ": hold, "MQ": flat, "TA": flat} for j in ("oracle", "reward")}},
            "real_minus_no_real": {"VQ": zero_flat, "MQ": zero_up, "TA": zero_flat},
        },
    }
    lines = findings(report)
    assert "(a) reasons help the critic's VQ accuracy: holds" in lines[0]
    assert "MQ accuracy: undecided at this budget" in lines[1]
    assert any(line.startswith("(b) LiFT beats the base on VQ by the oracle: holds") for line in lines)
    assert any(line.startswith("(b) LiFT beats the base on MQ by the reward: undecided") for line in lines)
    assert lines[-1].startswith("(c) real videos help temporal fidelity (oracle MQ win rate): holds")
    report["findings"] = lines
    md = markdown(report)
    assert "| reasons | 0.710 [" in md and "| with − without real | oracle |" in md
    assert "name exactly the wrong attributes 0.200 [" in md and "nothing false 0.500 [" in md
    assert "Student-t over the per-seed accuracies" in md  # these intervals carry no bootstrap method


def test_outcomes_and_win_rate_counts():
    assert outcomes([3, 1, 2], [1, 1, 5]) == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="paired"):
        outcomes([1, 2], [1])
    ci = win_rate_ci([[1.0, 0.5, 0.0, 1.0], [0.5, 1.0]])
    assert ci["mean"] == pytest.approx(4.0 / 6) and ci["n"] == 6 and ci["seeds"] == 2
    assert ci["decisive"] == 4 and ci["ties"] == 2 and "ties count 1/2" in ci["method"]
    assert "items only" in win_rate_ci([[1.0, 0.0]])["method"]
    assert win_rate_ci([[1.0]])["low"] is None  # one outcome: no interval


def test_bootstrap_matches_the_binomial_closed_form():
    """One seed, 400 prompts, 240 wins: the bootstrap of a proportion is the normal interval p ± 1.96·√(p(1−p)/n)."""
    ci = win_rate_ci([[1.0] * 240 + [0.0] * 160], n_boot=4000, seed=3)
    half = 1.959964 * math.sqrt(0.6 * 0.4 / 400)
    assert ci["mean"] == pytest.approx(0.6)
    assert ci["low"] == pytest.approx(0.6 - half, abs=0.006) and ci["high"] == pytest.approx(0.6 + half, abs=0.006)


def test_two_level_bootstrap_against_brute_force_enumeration():
    """Seeds [[1, 0], [1]]: every way of drawing 2 seeds, then each drawn seed's prompts, enumerated exactly."""
    import itertools
    from collections import Counter

    groups = [[1.0, 0.0], [1.0]]
    exact: Counter = Counter()
    for picks in itertools.product(range(2), repeat=2):  # each (1/2)^2
        per_seed = [list(itertools.product(groups[g], repeat=len(groups[g]))) for g in picks]
        for draws in itertools.product(*per_seed):
            p = 0.25 * np.prod([1.0 / len(s) for s in per_seed])
            values = [v for d in draws for v in d]
            exact[round(sum(values) / len(values), 6)] += p
    assert sum(exact.values()) == pytest.approx(1.0)
    means = bootstrap_means(groups, n_boot=20000, seed=0)
    seen = Counter(np.round(means, 6).tolist())
    assert set(seen) == set(exact)
    for value, p in exact.items():
        assert seen[value] / 20000 == pytest.approx(p, abs=0.012), value


def test_verdict_rule():
    better, worse, unclear = (
        {"mean": 0.65, "low": 0.6, "high": 0.7},
        {"mean": 0.35, "low": 0.3, "high": 0.4},
        {"mean": 0.52, "low": 0.45, "high": 0.6},
    )
    assert verdict(better) == "holds" and verdict(worse) == "contradicted"
    assert verdict(unclear) == "undecided at this budget"
    assert verdict(worse, better="below") == "holds" and verdict(better, 0.0) == "holds"
    assert verdict({"mean": 0.7, "low": None, "high": None}) == "undecided at this budget"  # one seed
    with pytest.raises(ValueError, match="above"):
        verdict(better, better="up")


def test_lift_finetune_intervals_pool_seeds_and_pair_prompts():
    def run(vq, mq):
        return {"outcomes": {"oracle": {"VQ": vq, "MQ": mq, "TA": [0.5] * len(vq)}, "reward": {"VQ": vq}}}

    runs = {
        "lift": {0: run([1, 1, 0.5, 1], [1, 0, 1, 1]), 1: run([1, 0, 1, 1], [1, 1, 1, 0.5])},
        "lift_no_real": {0: run([0, 1, 0.5, 1], [0, 0, 0, 1]), 1: run([1, 0, 0, 0], [0, 1, 0, 0])},
    }
    got = finetune_intervals(runs, [0, 1])
    vq = got["win_rate"]["lift"]["oracle"]["VQ"]
    assert vq["mean"] == pytest.approx(6.5 / 8) and vq["n"] == 8 and vq["seeds"] == 2
    assert vq["decisive"] == 7 and vq["ties"] == 1 and vq["low"] <= vq["mean"] <= vq["high"]
    # (c) pairs prompt by prompt: MQ differences 1,0,1,0 and 1,0,1,0.5 -> mean 4.5/8
    assert got["real_minus_no_real"]["MQ"]["mean"] == pytest.approx(4.5 / 8)
    assert got["real_minus_no_real"]["TA"]["mean"] == 0.0 and got["real_minus_no_real"]["TA"]["low"] == 0.0
    assert got["win_rate"]["lift"]["reward"]["MQ"]["n"] == 0  # the judge gave no MQ: no number, not a zero
    runs["lift_no_real"][1] = run([1, 0], [0, 1])
    with pytest.raises(ValueError, match="different prompts"):
        finetune_intervals(runs, [0, 1])


def test_flow_alignment_claims_pair_the_variants_prompt_by_prompt():
    from raypipe.bench.flow_alignment import _markdown, alignment_intervals

    def run(vq):
        return {"outcomes": {j: {"VQ": vq, "MQ": [0.5] * len(vq), "TA": [0.5] * len(vq)} for j in ("reward", "oracle")}}

    runs = {
        "sft": {0: run([0, 1, 0, 0.5] * 10), 1: run([0, 0, 1, 0] * 10)},
        "dpo": {0: run([1, 1, 1, 0.5] * 10), 1: run([1, 1, 1, 0] * 10)},
    }
    got = alignment_intervals(runs, ["VQ"])
    assert got["win_rate"]["dpo"]["oracle"]["VQ"]["mean"] == pytest.approx((3.5 + 3) / 8)
    claims = {c["claim"]: c for c in got["claims"]}
    beats = claims["dpo beats sft on VQ by the oracle"]
    # per prompt: seed 0 differences 1,0,1,0 (x10), seed 1: 1,1,0,0 (x10): mean 0.5, every resample > 0
    assert beats["difference"]["mean"] == pytest.approx(0.5) and beats["verdict"] == "holds"
    assert claims["dpo beats the base on VQ by the reward"]["verdict"] == "holds"
    assert len(got["claims"]) == 4  # (beats base, beats sft) x (reward, oracle) on the one targeted dimension
    report = {"weights": {"VQ": 1}, "steps": 2, "seeds": [0, 1], "prompts": 40, **got}
    report["runs"] = {n: {s: {"reward_hacking": []} for s in (0, 1)} for n in runs}
    md = _markdown(report)
    assert "| dpo beats sft on VQ by the oracle | holds | 0.50 [" in md and "0 of 2" in md
    # the SFT-term remedy is judged on what the pairs do not target: dpo_sft's MQ outcomes minus dpo's
    runs["dpo_sft"] = {s: run([0.5] * 40) for s in (0, 1)}
    for s in (0, 1):
        runs["dpo_sft"][s]["outcomes"]["oracle"]["MQ"] = [1.0] * 40
    claims = {c["claim"]: c for c in alignment_intervals(runs, ["VQ"])["claims"]}
    assert claims["dpo_sft keeps MQ better than dpo by the oracle"]["verdict"] == "holds"
    assert claims["dpo_sft keeps TA better than dpo by the reward"]["verdict"] == "undecided at this budget"
    assert "dpo beats dpo_sft on VQ by the oracle" not in claims
    runs["sft"][1] = run([0, 1])
    with pytest.raises(ValueError, match="different prompts"):
        alignment_intervals(runs, ["VQ"])


def test_cells_resume_and_seeds(tmp_path):
    from raypipe.bench.cells import cell, parse_seeds

    calls = []

    def job():
        calls.append(1)
        (tmp_path / "r.json").write_text('{"x": 1}')
        return {"x": 1}

    assert cell(tmp_path / "r.json", job) == {"x": 1} and cell(tmp_path / "r.json", job) == {"x": 1}
    assert len(calls) == 1  # the second time it was read back
    with pytest.raises(RuntimeError, match="without writing"):
        cell(tmp_path / "never.json", lambda: {})
    assert parse_seeds("0, 1,2") == [0, 1, 2] and parse_seeds(3) == [3]
    for bad in ("0,0", "a", ""):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_reward_ablation_intervals_and_claims():
    from raypipe.bench.reward_ablation import ablation_intervals, markdown_table

    def val(with_ties):
        return {"val": {d: {"acc_without_ties": 0.9, "acc_with_ties": with_ties} for d in ("VQ", "MQ", "TA")}}

    per_seed = {
        0: {"btt": val(0.80), "bt": val(0.70)},
        1: {"btt": val(0.82), "bt": val(0.71)},
        2: {"btt": val(0.79), "bt": val(0.70)},
    }
    got = ablation_intervals(per_seed, ["bt", "btt"])
    assert got["accuracy"]["btt"]["VQ"]["acc_with_ties"]["mean"] == pytest.approx(2.41 / 3)
    assert [c["claim"] for c in got["claims"]] == [
        f"btt beats bt on {d} accuracy with ties" for d in ("VQ", "MQ", "TA")
    ]
    beats = got["claims"][0]
    # differences 0.10, 0.11, 0.09: mean 0.10, s = 0.01, half-width t_{.975,2}·0.01/√3 = 0.0248
    assert beats["difference"]["mean"] == pytest.approx(0.10)
    assert beats["difference"]["low"] == pytest.approx(0.10 - 4.302653 * 0.01 / math.sqrt(3), abs=1e-6)
    assert beats["verdict"] == "holds"
    md = markdown_table({"seeds": [0, 1, 2], **got})
    assert "| btt beats bt on TA accuracy with ties | holds | 0.100 [" in md
    assert "| btt | 0.900 [0.900, 0.900] | 0.803 [" in md


def test_lift_critic_intervals_pool_videos_and_pair_them_by_path():
    def run(vq, order=None):
        paths = [f"v{i}.mp4" for i in range(len(vq))]
        pick = order or range(len(vq))
        return {
            "accuracy": {"VQ": np.mean([v for v in vq if v is not None])},
            "correct": {d: {paths[i]: vq[i] for i in pick} for d in ("VQ", "MQ", "TA")},
        }

    runs = {
        "reasons": {0: run([1, 1, 0, None]), 1: run([1, 1, 1, 0])},
        "score_only": {0: run([0, 1, 0, 1], order=[3, 2, 1, 0]), 1: run([0, 0, 1, 0])},
    }
    got = critic_intervals(runs, [0, 1])
    vq = got["accuracy"]["reasons"]["VQ"]
    assert vq["mean"] == pytest.approx(5 / 7) and vq["n"] == 7 and vq["seeds"] == 2 and "bootstrap" in vq["method"]
    # paired by path whatever the order; the unrated video of seed 0 drops out: 1,0,0 and 1,1,0,0 -> 3/7
    diff = got["reasons_minus_score_only"]["VQ"]
    assert diff["mean"] == pytest.approx(3 / 7) and diff["n"] == 7 and diff["low"] <= diff["mean"] <= diff["high"]
    runs["score_only"][1]["correct"]["VQ"] = {"other.mp4": 1}
    with pytest.raises(ValueError, match="different held-out videos"):
        critic_intervals(runs, [0, 1])
    old = {
        n: {s: {"accuracy": {"VQ": a}, "correct": None} for s, a in zip((0, 1, 2), v)}
        for n, v in (("reasons", (0.7, 0.8, 0.75)), ("score_only", (0.6, 0.7, 0.65)))
    }
    got = critic_intervals(old, [0, 1, 2])  # runs from before per-video outcomes: t-interval over seeds
    assert got["reasons_minus_score_only"]["VQ"]["mean"] == pytest.approx(0.1)
    assert got["reasons_minus_score_only"]["VQ"]["low"] == pytest.approx(0.1)  # identical differences: zero width


def test_heaviest_dimensions_and_clipped_t_intervals():
    from raypipe.bench.nrg import heaviest

    assert heaviest({"VQ": 0.1, "MQ": 0.1, "TA": 0.8}) == ["TA"]
    assert heaviest({"MQ": 0.5, "VQ": 0.5, "TA": 0.0}) == ["VQ", "MQ"]  # both tied ones, in judged order
    assert heaviest({"VQ": 1 / 3, "MQ": 1 - 2 / 3, "TA": 1 / 3}) == ["VQ", "MQ", "TA"]  # float noise is a tie
    assert heaviest({"Overall": 1.0}) == []
    # two seeds: t_{.975,1}·s/√2 = 12.706·0.1414/1.414 = 1.27 around 0.8 -> cut at 1 (and at 0)
    ci = mean_ci([0.7, 0.9], bounds=(0.0, 1.0))
    assert ci["low"] == 0.0 and ci["high"] == 1.0 and ci["clipped"] and ci["mean"] == pytest.approx(0.8)
    inside = mean_ci([0.70, 0.71, 0.72], bounds=(0.0, 1.0))
    assert "clipped" not in inside and inside["high"] == pytest.approx(0.71 + 4.302653 * 0.01 / math.sqrt(3))
    d = paired_ci([0.9, 0.1], [0.1, 0.9], bounds=(-1.0, 1.0))
    assert d["low"] == -1.0 and d["high"] == 1.0 and d["mean"] == 0.0
    assert paired_ci([0.9, 0.1], [0.1, 0.9])["high"] > 1.0  # without bounds nothing is cut


def test_soak_report_per_minute_and_rss_drift():
    from raypipe.bench.serve import soak_report

    # minute 1: 3 requests (one 503), minute 2: 2 requests; RSS of two deployments sampled twice a minute
    results = [(1.0, 200, 0.1), (20.0, 503, 0.2), (59.0, 200, 0.3), (61.0, 200, 0.4), (119.0, 200, 0.5)]
    mb = 2**20
    rss = [(0, "RewardAPI", 100 * mb), (30, "RewardAPI", 104 * mb), (70, "RewardAPI", 110 * mb)]
    rss += [(0, "RewardModel", 500 * mb), (65, "RewardModel", 520 * mb), (90, "RewardModel", float("nan"))]
    got = soak_report(results, rss, 120.0)
    assert [r["requests"] for r in got["per_minute"]] == [3, 2] and got["per_minute"][0]["non_2xx"] == 1
    assert got["per_minute"][0]["rss_mb_RewardAPI"] == 104.0 and got["per_minute"][1]["rss_mb_RewardModel"] == 520.0
    assert got["per_minute"][1]["p99_ms"] == pytest.approx(np.percentile([400, 500], 99))
    assert got["rss_drift"]["RewardAPI"] == pytest.approx(110 / 104 - 1, abs=1e-4)  # 5.8%
    assert got["rss_drift"]["RewardModel"] == pytest.approx(0.04)
    assert got["rss_flat_within_10pct"] is True and got["non_2xx"] == 1 and got["requests"] == 5
    rss.append((100, "RewardAPI", 130 * mb))
    assert soak_report(results, rss, 120.0)["rss_flat_within_10pct"] is False  # 130 / 104: 25% up
