"""Pairwise accuracy (SPEC §4): hand-worked cases and a brute-force O(N²) tie-calibration sweep; the official
VideoAlign numbers against a plain transcription of its calc_accuracy.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from raypipe.reward.metrics import (
    accuracy_curve,
    accuracy_with_ties,
    accuracy_without_ties,
    official_accuracy_with_ties,
    official_accuracy_without_ties,
    official_report,
    pairwise_report,
)


def _sgn(x: float) -> int:
    return 1 if x > 0 else -1 if x < 0 else 0


def brute_force(h, m):
    """Every candidate ε checked directly, in plain Python: ([ε], [accuracy]) and the smallest maximiser."""
    h, m = list(h), [float(x) for x in m]
    n = len(h)
    candidates = [-1.0] + sorted({abs(x) for x in m})
    accs = []
    for eps in candidates:
        hits = 0
        for hi, mi in zip(h, m):
            if hi == 0:
                hits += abs(mi) <= eps
            else:
                hits += abs(mi) > eps and _sgn(mi) == hi
        accs.append(hits / n)
    best = max(accs)
    return candidates, accs, best, candidates[accs.index(best)]  # index(): the first, i.e. smallest ε


# ---------- hand-worked ----------


def test_hand_worked_example():
    h, m = [1, -1, 0, 1], [0.5, -0.2, 0.1, 0.0]
    # decisive pairs 0, 1, 3: pairs 0 and 1 right, pair 3 has m = 0 -> wrong
    assert accuracy_without_ties(h, m) == pytest.approx(2 / 3)
    # |m| = .5 .2 .1 0. ε=-1: 2/4; ε=0: pair 3 -> tie (was wrong) 2/4; ε=.1: + tie pair 2 -> 3/4;
    # ε=.2: pair 1 lost -> 2/4; ε=.5: pair 0 lost -> 1/4
    eps, acc = accuracy_curve(h, m)
    assert eps.tolist() == [-1.0, 0.0, 0.1, 0.2, 0.5]
    assert acc.tolist() == [0.5, 0.5, 0.75, 0.5, 0.25]
    assert accuracy_with_ties(h, m) == (0.75, 0.1)


def test_zero_margin_counts_wrong():
    assert accuracy_without_ties([1, -1, 1], [0.0, 0.0, 2.0]) == pytest.approx(1 / 3)
    assert accuracy_without_ties([1, -1], [-0.0, 0.0]) == 0.0
    # predicting those zero-margin pairs as ties does not help either (they are not ties)
    assert accuracy_with_ties([1, -1], [0.0, 0.0]) == (0.0, -1.0)


def test_equal_abs_margins_switch_together():
    # pairs with |m| = 0.5: a true tie and a correctly ordered decisive pair (m = -0.5 also has |m| = 0.5)
    h = [0, -1, 1]
    m = [0.5, -0.5, 0.9]
    # ε=-1: pairs 1, 2 right -> 2/3. ε=0.5: pair 0 right, pair 1 lost, pair 2 right -> 2/3. ε=0.9: 1/3.
    assert accuracy_with_ties(h, m) == (pytest.approx(2 / 3), -1.0)

    def naive(h, m):
        # WRONG on purpose: sorts by |m| and switches one pair at a time, so it may split equal |m|
        order = sorted(range(len(h)), key=lambda i: (abs(m[i]), h[i] != 0))  # ties first within a group
        hits = sum(hi != 0 and _sgn(mi) == hi for hi, mi in zip(h, m))
        best = hits
        for i in order:
            hits += (h[i] == 0) - (h[i] != 0 and _sgn(m[i]) == h[i])
            best = max(best, hits)
        return best / len(h)

    assert naive(h, m) == pytest.approx(1.0)  # counts "pair 0 tie, pair 1 not" - no threshold does that
    assert brute_force(h, m)[2] == pytest.approx(2 / 3)


def test_no_ties_best_gives_minus_one():
    assert accuracy_with_ties([1, -1, 1], [0.3, -0.1, 0.2]) == (1.0, -1.0)
    # ε=-1 and ε=0 give the same accuracy: the smaller (no ties) is chosen
    assert accuracy_curve([1, 1], [0.0, 0.5])[1].tolist() == [0.5, 0.5, 0.0]
    assert accuracy_with_ties([1, 1], [0.0, 0.5]) == (0.5, -1.0)


def test_smallest_maximising_epsilon():
    # ε=.1 and ε=.3 both give 2/3
    eps, acc = accuracy_curve([0, 1, 0], [0.1, 0.2, -0.3])
    assert acc.tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 3, 2 / 3])
    assert accuracy_with_ties([0, 1, 0], [0.1, 0.2, -0.3]) == (pytest.approx(2 / 3), 0.1)


def test_all_ties():
    h, m = [0, 0, 0], [0.2, -0.5, 0.2]
    assert math.isnan(accuracy_without_ties(h, m))
    assert accuracy_with_ties(h, m) == (1.0, 0.5)
    report = pairwise_report(h, m)
    assert report["n"] == 3 and report["n_ties"] == 3 and report["acc_with_ties"] == 1.0
    assert math.isnan(report["acc_without_ties"])


def test_empty_input():
    assert math.isnan(accuracy_without_ties([], []))
    acc, eps = accuracy_with_ties([], [])
    assert math.isnan(acc) and eps == -1.0
    report = pairwise_report([], [])
    assert report["n"] == 0 and report["n_ties"] == 0 and report["epsilon"] == -1.0
    assert math.isnan(report["acc_with_ties"]) and math.isnan(report["acc_without_ties"])


def test_report_is_plain_and_json_ready():
    report = pairwise_report(np.array([1, -1, 0, 1]), np.array([0.5, -0.2, 0.1, 0.0], dtype=np.float32))
    assert set(report) == {"acc_without_ties", "acc_with_ties", "epsilon", "n", "n_ties"}
    assert type(report["n"]) is int and type(report["n_ties"]) is int
    assert all(type(report[k]) is float for k in ("acc_without_ties", "acc_with_ties", "epsilon"))
    assert report["acc_without_ties"] == pytest.approx(2 / 3) and report["acc_with_ties"] == 0.75
    assert report["epsilon"] == pytest.approx(0.1) and report["n"] == 4 and report["n_ties"] == 1
    json.dumps(report)


def test_float_labels_accepted():
    assert accuracy_with_ties(np.array([1.0, -1.0, 0.0]), [1.0, -1.0, 0.0]) == (1.0, 0.0)


@pytest.mark.parametrize(
    "h, m, match",
    [
        ([1, 2], [0.1, 0.2], "2"),
        ([1, float("nan")], [0.1, 0.2], "bad values"),
        (["A", "B"], [0.1, 0.2], "bad values"),
        ([1, 0.5], [0.1, 0.2], "0.5"),
        ([1, -1], [0.1, float("nan")], "NaN"),
        ([1, -1, 0], [0.1, 0.2], "equal length"),
        ([[1, -1]], [[0.1, 0.2]], "1-D"),
    ],
)
def test_bad_values_raise(h, m, match):
    for fn in (
        accuracy_without_ties,
        accuracy_with_ties,
        accuracy_curve,
        pairwise_report,
        official_accuracy_with_ties,
        official_accuracy_without_ties,
        official_report,
    ):
        with pytest.raises(ValueError, match=match):
            fn(h, m)


# ---------- randomized against the brute force ----------


@pytest.mark.parametrize("n", [1, 2, 3, 7, 40])
def test_matches_brute_force_with_heavy_duplicates(n):
    for seed in range(200):
        rng = np.random.default_rng(seed * 1000 + n)
        # a handful of magnitudes, both signs, zero included: many equal |m| across h classes
        levels = rng.choice([0.0, 0.25, 0.5, 1.0, 1.5], size=int(rng.integers(1, 5)), replace=False)
        m = rng.choice(levels, size=n) * rng.choice([-1.0, 1.0], size=n)
        h = rng.choice([-1, 0, 1], size=n, p=rng.dirichlet([1.0, 1.0, 1.0]))
        cand, accs, best, best_eps = brute_force(h.tolist(), m.tolist())
        eps, acc = accuracy_curve(h, m)
        assert eps.tolist() == cand, seed
        assert acc.tolist() == accs, seed  # same integer counts / n: exact equality
        assert accuracy_with_ties(h, m) == (best, best_eps), seed
        decisive = [(hi, mi) for hi, mi in zip(h.tolist(), m.tolist()) if hi != 0]
        got = accuracy_without_ties(h, m)
        if decisive:
            assert got == sum(_sgn(mi) == hi for hi, mi in decisive) / len(decisive), seed
        else:
            assert math.isnan(got), seed


# ---------- the official script's numbers (VideoAlign calc_accuracy.py) ----------


def official_transcription(h, m):
    """VideoAlign calc_accuracy.py, transcribed statement by statement (suff_stats at ε = -1, then the sweep over
    pairs sorted by |m| with Python's stable sort, scoring after each single pair). Returns (with, without)."""

    def suff_stats(eps):
        c = d = th = tm = thm = 0
        for hi, mi in zip(h, m):
            if hi == 0 and abs(mi) <= eps:
                thm += 1
            elif hi == 0:
                th += 1
            elif abs(mi) <= eps:
                tm += 1
            elif hi * mi > 0:
                c += 1
            else:
                d += 1
        return c, d, th, tm, thm

    c, d, th, tm, thm = suff_stats(-1)
    without = c / (c + d + tm) if c + d + tm else float("nan")  # the official raises ZeroDivisionError
    stat = {"C": c, "D": d, "Th": th, "Tm": tm, "Thm": thm}
    acc_star, eps_curr = float("-inf"), -1
    for hi, mi in sorted(zip(h, m), key=lambda x: abs(x[1])):
        if hi == 0 and abs(mi) < eps_curr:  # remove the pair from its current cell
            stat["Thm"] -= 1
        elif hi == 0:
            stat["Th"] -= 1
        elif abs(mi) < eps_curr:
            stat["Tm"] -= 1
        elif hi * mi > 0:
            stat["C"] -= 1
        else:
            stat["D"] -= 1
        eps_curr = abs(mi)
        if hi == 0 and abs(mi) <= eps_curr:  # add it back at the new threshold
            stat["Thm"] += 1
        elif hi == 0:
            stat["Th"] += 1
        elif abs(mi) <= eps_curr:
            stat["Tm"] += 1
        elif hi * mi > 0:
            stat["C"] += 1
        else:
            stat["D"] += 1
        acc = (stat["C"] + stat["Thm"]) / sum(stat.values())
        acc_star = max(acc_star, acc)
    return acc_star, without


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 40])
def test_official_matches_transcription_with_heavy_duplicates(n):
    for seed in range(200):
        rng = np.random.default_rng(seed * 1000 + n + 7)
        levels = rng.choice([0.0, 0.25, 0.5, 1.0, 1.5], size=int(rng.integers(1, 5)), replace=False)
        m = rng.choice(levels, size=n) * rng.choice([-1.0, 1.0], size=n)
        h = rng.choice([-1, 0, 1], size=n, p=rng.dirichlet([1.0, 1.0, 1.0]))
        want_with, want_without = official_transcription(h.tolist(), m.tolist())
        assert official_accuracy_with_ties(h, m) == want_with, seed  # integer counts / n: exact
        assert _same(official_accuracy_without_ties(h, m), want_without), seed
        assert _same(official_accuracy_without_ties(h, m), accuracy_without_ties(h, m)), seed  # same number
        report = official_report(h, m)
        assert report["accuracy_with_ties"] == want_with and _same(report["accuracy_without_ties"], want_without)


def test_official_splits_equal_margins_and_depends_on_row_order():
    # |m| = .5 .5 .9; pair 0 a human tie, pair 1 right, pair 2 right.
    # exact (thresholds): ε=-1: pairs 1, 2 right = 2/3; ε=.5 (pairs 0 AND 1 predicted ties): pair 0 right,
    #   pair 1 lost, pair 2 right = 2/3; ε=.9: only pair 0 right = 1/3.  max = 2/3
    # official: start C=2 Th=1 (not scored); move pair 0 -> Thm=1: (2 + 1)/3 = 1.0 <- the split no ε makes;
    #           move pair 1 -> C=1: 2/3; move pair 2 -> C=0: 1/3.  max = 1.0
    h, m = [0, -1, 1], [0.5, -0.5, 0.9]
    assert accuracy_with_ties(h, m) == (pytest.approx(2 / 3), -1.0)
    assert official_accuracy_with_ties(h, m) == 1.0
    # same pairs, pair 1 first: move it -> C=1: 1/3; pair 0 -> Thm=1: 2/3; pair 2: 1/3. max = 2/3
    assert official_accuracy_with_ties([-1, 0, 1], [-0.5, 0.5, 0.9]) == pytest.approx(2 / 3)
    assert accuracy_with_ties([-1, 0, 1], [-0.5, 0.5, 0.9])[0] == pytest.approx(2 / 3)
    assert official_accuracy_without_ties(h, m) == 1.0  # pairs 1, 2 decisive and right


def test_official_never_scores_the_no_ties_state():
    # both right: exact 1.0 at ε=-1; official: move |.1| -> C=1: 1/2; move |.3| -> 0. max = 1/2
    assert accuracy_with_ties([1, -1], [0.3, -0.1]) == (1.0, -1.0)
    assert official_accuracy_with_ties([1, -1], [0.3, -0.1]) == 0.5
    assert official_accuracy_without_ties([1, -1], [0.3, -0.1]) == 1.0


def test_official_empty_and_all_ties():
    # empty: the official returns -inf (with ties) and raises ZeroDivisionError (without); we give NaN
    assert math.isnan(official_accuracy_with_ties([], [])) and math.isnan(official_accuracy_without_ties([], []))
    # all human ties: every pair moved to "tie" is right -> 1.0; without ties has no decisive pair -> NaN
    assert official_accuracy_with_ties([0, 0, 0], [0.2, -0.5, 0.2]) == 1.0
    assert math.isnan(official_accuracy_without_ties([0, 0, 0], [0.2, -0.5, 0.2]))
    report = official_report([], [])
    assert set(report) == {"accuracy_with_ties", "accuracy_without_ties"} and math.isnan(report["accuracy_with_ties"])
    # m = 0 on a decisive pair is discordant (h·m > 0 fails), as in ours
    assert official_accuracy_without_ties([1, -1, 1], [0.0, -0.0, 2.0]) == pytest.approx(1 / 3)
