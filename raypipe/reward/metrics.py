"""Pairwise accuracy of a reward model against human labels (SPEC §4). Pure numpy.

    report = pairwise_report(h, m)   # {"acc_without_ties", "acc_with_ties", "epsilon", "n", "n_ties"}
    official = official_report(h, m)  # {"accuracy_with_ties", "accuracy_without_ties"}: the official script's

`h` is the human label per pair: +1 (A preferred), -1 (B preferred), 0 (tie); `m = r_A - r_B` the model margin.

Ties-included accuracy uses tie calibration (Deutsch, Foster & Freitag, 2023, "Ties Matter: Meta-Evaluating
Modern Metrics with Pairwise Accuracy and Tie Calibration"): the model predicts a tie when |m| ≤ ε, and ε is
chosen to maximise accuracy over ε ∈ {-1 (no ties)} ∪ {distinct observed |m|}. Every threshold between two
consecutive distinct |m| gives the same predictions as the lower one, so this set covers all possible outcomes.

`official_*` reproduce VideoAlign's `calc_accuracy.py` (the VideoGen-RewardBench leaderboard numbers), which
differs from the exact metric in two ways: it sweeps pair by pair after a stable sort by |m|, so it may score a
"threshold" that splits pairs of equal |m| (row order decides which side each lands on), and it never scores the
starting state ε = -1 (no predicted ties). It can therefore be higher or lower than `accuracy_with_ties`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "accuracy_without_ties",
    "accuracy_with_ties",
    "accuracy_curve",
    "pairwise_report",
    "official_accuracy_with_ties",
    "official_accuracy_without_ties",
    "official_report",
]

NO_TIES = -1.0  # the ε meaning "the model never predicts a tie" (|m| ≥ 0 > -1)


def _validate(h, m) -> tuple[np.ndarray, np.ndarray]:
    """Return (h as int64 in {-1, 0, 1}, m as float64), both 1-D of equal length; ValueError otherwise."""
    h_raw = np.asarray(h)
    m_arr = np.asarray(m, dtype=np.float64)
    if h_raw.ndim != 1 or m_arr.ndim != 1:
        raise ValueError(f"h and m must be 1-D, got shapes {h_raw.shape} and {m_arr.shape}")
    if h_raw.shape != m_arr.shape:
        raise ValueError(f"h and m must have equal length, got {len(h_raw)} and {len(m_arr)}")
    try:
        h_f = h_raw.astype(np.float64)
    except (TypeError, ValueError):
        bad = sorted({repr(v) for v in h_raw.tolist() if v not in (1, -1, 0)})
        raise ValueError(f"h must hold +1, -1 or 0; got bad values {bad[:10]}") from None
    bad_mask = ~np.isin(h_f, (-1.0, 0.0, 1.0))  # NaN is never in the set
    if bad_mask.any():
        bad = np.unique(h_raw[bad_mask])[:10].tolist()
        raise ValueError(f"h must hold +1, -1 or 0; got bad values {bad}")
    if np.isnan(m_arr).any():
        raise ValueError(f"m holds NaN at positions {np.flatnonzero(np.isnan(m_arr))[:10].tolist()}")
    return h_f.astype(np.int64), m_arr


def _correct_decisive(h: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Pairs with h ≠ 0 and sign(m) = h; m = 0 has sign 0 and so is wrong."""
    return (h != 0) & (np.sign(m).astype(np.int64) == h)


def _sweep(h: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact integer counts of correct pairs for every candidate ε, in increasing ε order.

    Returns (eps, n_correct) with eps = [-1, distinct |m| ascending]. O(N log N): one sort, one cumulative sum.
    Switching pair i to "tie" changes the count by gain_i = [h_i = 0] - [correct as a decisive prediction];
    at threshold v every pair with |m| ≤ v has switched, so count(v) = count(-1) + Σ_{|m_i| ≤ v} gain_i.
    Evaluating the cumulative sum only at the LAST index of each group of equal |m| makes equal |m| switch
    together (a threshold cannot separate them).
    """
    correct = _correct_decisive(h, m)
    base = int(correct.sum())
    a = np.abs(m)
    order = np.argsort(a, kind="stable")
    a_sorted = a[order]
    gain = (h[order] == 0).astype(np.int64) - correct[order].astype(np.int64)
    cum = np.cumsum(gain)
    group_end = np.ones(len(a_sorted), dtype=bool)
    group_end[:-1] = a_sorted[1:] != a_sorted[:-1]
    eps = np.concatenate(([NO_TIES], a_sorted[group_end]))
    counts = np.concatenate(([base], base + cum[group_end]))
    return eps, counts


def accuracy_without_ties(h, m) -> float:
    """Ties-excluded accuracy: #{h ≠ 0, sign(m) = h} / #{h ≠ 0}; m = 0 counts wrong. nan if no pair has h ≠ 0."""
    h, m = _validate(h, m)
    n_decisive = int((h != 0).sum())
    if n_decisive == 0:
        return float("nan")
    return int(_correct_decisive(h, m).sum()) / n_decisive


def accuracy_curve(h, m) -> tuple[np.ndarray, np.ndarray]:
    """Ties-included accuracy for every candidate ε (for plotting accuracy vs ε).

        Accuracy(ε) = (#{h ≠ 0, |m| > ε, sign(m) = h} + #{h = 0, |m| ≤ ε}) / N

    Returns (eps_values, accuracies): eps_values = [-1, distinct |m| ascending], float64 arrays.
    Empty input gives ([-1.0], [nan]).
    """
    h, m = _validate(h, m)
    if len(h) == 0:
        return np.array([NO_TIES]), np.array([np.nan])
    eps, counts = _sweep(h, m)
    return eps, counts / len(h)


def accuracy_with_ties(h, m) -> tuple[float, float]:
    """Ties-included accuracy with tie calibration: (max_ε Accuracy(ε), ε*) over ε ∈ {-1} ∪ {distinct |m|}.

    Accuracy(ε) is as in `accuracy_curve`. When several ε attain the maximum, ε* is the SMALLEST of them
    (the fewest predicted ties; -1.0 when predicting no ties is as good as any threshold). The maximum is taken
    over exact integer counts, so the choice does not depend on float rounding. Empty input gives (nan, -1.0).
    """
    h, m = _validate(h, m)
    if len(h) == 0:
        return float("nan"), NO_TIES
    eps, counts = _sweep(h, m)
    best = int(np.argmax(counts))  # argmax returns the first maximiser, i.e. the smallest ε
    return int(counts[best]) / len(h), float(eps[best])


def pairwise_report(h, m) -> dict:
    """All of §4 for one dimension as plain Python numbers (JSON-ready).

    Keys: `acc_without_ties`, `acc_with_ties`, `epsilon` (ε*), `n` (pairs), `n_ties` (pairs with h = 0).
    """
    h_v, m_v = _validate(h, m)
    acc_with, eps = accuracy_with_ties(h_v, m_v)
    return {
        "acc_without_ties": float(accuracy_without_ties(h_v, m_v)),
        "acc_with_ties": float(acc_with),
        "epsilon": float(eps),
        "n": int(len(h_v)),
        "n_ties": int((h_v == 0).sum()),
    }


# --- the official script's numbers (VideoAlign calc_accuracy.py) ---------------------------------------------
def official_accuracy_with_ties(h, m) -> float:
    """The official script's accuracy with ties (`calc_accuracy_with_ties`), reproduced exactly.

    The official sweep: start from the counts at ε = -1 (no pair predicted a tie), sort the pairs by |m| with
    Python's stable sort (equal |m| keep their input order), move them ONE AT A TIME to "model predicts a tie"
    and take the best accuracy seen after each move: max_{k=1..N} (base + Σ_{j≤k} gain_(j)) / N, with gain as in
    `_sweep`. Two consequences, both unlike `accuracy_with_ties`: a group of equal |m| can be split after any
    of its pairs (so the result depends on row order and may exceed every real threshold), and the state
    k = 0 (ε = -1, no ties predicted) is never scored. Ties at k = N (every pair a tie) always are, so the
    result is ≥ (human ties) / N.

    Empty input gives NaN (the official code returns -inf there, and 0 when it raises).
    """
    h, m = _validate(h, m)
    if len(h) == 0:
        return float("nan")
    correct = _correct_decisive(h, m)
    order = np.argsort(np.abs(m), kind="stable")  # stable, like Python's sorted(): equal |m| in input order
    gain = (h[order] == 0).astype(np.int64) - correct[order].astype(np.int64)
    counts = int(correct.sum()) + np.cumsum(gain)  # after moving 1, 2, ..., N pairs; k = 0 is not a candidate
    return int(counts.max()) / len(h)


def official_accuracy_without_ties(h, m) -> float:
    """The official script's accuracy without ties (`calc_accuracy_without_ties`): C / (C + D + Tm) at ε = -1.

    At ε = -1 the model predicts no tie, so Tm = 0 and this is #{h ≠ 0, h·m > 0} / #{h ≠ 0}: the same number as
    `accuracy_without_ties` (m = 0 counts as discordant there too). No pair with h ≠ 0 gives NaN (the official
    code raises ZeroDivisionError).
    """
    h, m = _validate(h, m)
    c = int(((h != 0) & (h * m > 0)).sum())  # consistent
    d = int(((h != 0) & ~(h * m > 0)).sum())  # discordant, m = 0 included
    tm = 0  # model ties at ε = -1: |m| ≤ -1 never holds
    return c / (c + d + tm) if c + d + tm else float("nan")


def official_report(h, m) -> dict:
    """The official script's two numbers, JSON-ready: `accuracy_with_ties`, `accuracy_without_ties`."""
    h_v, m_v = _validate(h, m)
    return {
        "accuracy_with_ties": float(official_accuracy_with_ties(h_v, m_v)),
        "accuracy_without_ties": float(official_accuracy_without_ties(h_v, m_v)),
    }
