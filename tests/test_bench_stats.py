"""Error bars of the benches: the t-interval by hand, the paired difference, and the LiFT bench's verdicts."""

import math

import pytest

from raypipe.bench.lift import findings, markdown
from raypipe.bench.stats import excludes, fmt, mean_ci, paired_ci


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
        },
        "finetune": {
            "win_rate": {"lift": {j: {"VQ": hold, "MQ": flat, "TA": flat} for j in ("oracle", "reward")}},
            "real_minus_no_real": {"VQ": zero_flat, "MQ": zero_up, "TA": zero_flat},
        },
    }
    lines = findings(report)
    assert "(a) reasons help the critic's VQ accuracy: holds" in lines[0]
    assert "MQ accuracy: is not shown" in lines[1]
    assert any(line.startswith("(b) LiFT beats the base on VQ by the oracle: holds") for line in lines)
    assert any(line.startswith("(b) LiFT beats the base on MQ by the reward: is not shown") for line in lines)
    assert lines[-1].startswith("(c) real videos help temporal fidelity (oracle MQ win rate): holds")
    report["findings"] = lines
    md = markdown(report)
    assert "| reasons | 0.710 [" in md and "| with − without real | oracle |" in md
