"""Error bars for claims made over seeds: a mean with its 95% Student-t interval, and a paired difference.

    mean_ci([0.61, 0.55, 0.58])            # {"mean": 0.58, "low": ..., "high": ..., "n": 3, "values": [...]}
    paired_ci([0.61, 0.55], [0.50, 0.52])  # the same for the per-seed differences a − b

With n values the half-width is t_{0.975, n−1}·s/√n (s the sample standard deviation); n = 1 gives no interval
(low = high = None): one seed is not a result.
"""

from __future__ import annotations

import math

import numpy as np


def mean_ci(values, level: float = 0.95) -> dict:
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    out = {"mean": float(x.mean()) if len(x) else None, "low": None, "high": None, "n": int(len(x))}
    out["values"] = [round(float(v), 4) for v in x]
    if len(x) >= 2:
        half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
        out["low"], out["high"] = out["mean"] - half, out["mean"] + half
    return out


def paired_ci(a, b, level: float = 0.95) -> dict:
    """The interval of the mean per-seed difference a_i − b_i (pairs with a missing side are left out)."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    return mean_ci([x - y for x, y in pairs], level)


def excludes(ci: dict, value: float) -> str:
    """'above' / 'below' when the interval lies wholly above / below `value`, else 'overlaps' (or 'no interval')."""
    if ci["low"] is None:
        return "no interval"
    if ci["low"] > value:
        return "above"
    if ci["high"] < value:
        return "below"
    return "overlaps"


def fmt(ci: dict, digits: int = 2) -> str:
    if ci["mean"] is None:
        return "–"
    if ci["low"] is None:
        return f"{ci['mean']:.{digits}f}"
    return f"{ci['mean']:.{digits}f} [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"
