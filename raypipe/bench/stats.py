"""Error bars for claims made over seeds and prompts, and the verdict a claim gets from them.

    mean_ci([0.61, 0.55, 0.58])            # {"mean": 0.58, "low": ..., "high": ..., "n": 3, "values": [...]}
    paired_ci([0.61, 0.55], [0.50, 0.52])  # the same for the per-seed differences a − b
    outcomes(new_scores, old_scores)       # per prompt: 1 new wins, ½ tie, 0 old wins
    win_rate_ci([seed0_outcomes, seed1_outcomes, ...])  # mean, 95% bootstrap interval, decisive pairs, ties
    bootstrap_ci([seed0_diffs, seed1_diffs, ...])        # the same interval for any per-item values
    verdict(ci, null=0.5)                  # "holds" / "contradicted" / "undecided at this budget"

t-interval (`mean_ci`): with n values the half-width is t_{0.975, n−1}·s/√n (s the sample standard deviation);
n = 1 gives no interval (low = high = None): one seed is not a result. An accuracy's interval is cut at [0, 1]
(a difference's at [−1, 1]) and marked `clipped`: with two seeds t_{0.975,1} = 12.7 can reach past them.

Bootstrap (`win_rate_ci`, `BOOTSTRAP_METHOD`): a two-level percentile bootstrap. Each of B resamples draws the
seeds with replacement, then within every drawn seed its prompts with replacement, and takes the mean outcome over
all drawn prompts; the interval is the 2.5th and 97.5th percentiles of the B means. Both sources of noise — which
seed trained the model, which prompts judged it — are in the interval. With one seed only the prompts are resampled
(said in `method`).
"""

from __future__ import annotations

import math

import numpy as np


def mean_ci(values, level: float = 0.95, bounds: tuple[float, float] | None = None) -> dict:
    """The mean with its Student-t interval. `bounds`: the values the quantity can take (an accuracy: (0, 1)); an
    interval reaching past them (few seeds: t_{0.975,1} = 12.7) is cut at them and says so (`clipped`)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    out = {"mean": float(x.mean()) if len(x) else None, "low": None, "high": None, "n": int(len(x))}
    out["values"] = [round(float(v), 4) for v in x]
    if len(x) >= 2:
        half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
        out["low"], out["high"] = out["mean"] - half, out["mean"] + half
        if bounds is not None and (out["low"] < bounds[0] or out["high"] > bounds[1]):
            out["low"], out["high"] = max(out["low"], bounds[0]), min(out["high"], bounds[1])
            out["clipped"] = True
    return out


def paired_ci(a, b, level: float = 0.95, bounds: tuple[float, float] | None = None) -> dict:
    """The interval of the mean per-seed difference a_i − b_i (pairs with a missing side are left out); `bounds`
    as in `mean_ci` (a difference of accuracies: (−1, 1))."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    return mean_ci([x - y for x, y in pairs], level, bounds)


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


BOOTSTRAP_METHOD = (
    "two-level percentile bootstrap ({b} resamples): seeds with replacement, then the items (prompts, or held-out "
    "videos) with replacement within each drawn seed; the mean outcome over the drawn items; ties count 1/2"
)


def outcomes(new, old) -> list[float]:
    """Per item: 1.0 where `new` scores above `old`, 0.5 on a tie, 0.0 below (the win rate is their mean)."""
    a, b = np.asarray(new, float), np.asarray(old, float)
    if a.shape != b.shape:
        raise ValueError(f"outcomes needs paired scores, got {a.shape} vs {b.shape}")
    return ((a > b) + 0.5 * (a == b)).astype(float).tolist()


def bootstrap_means(groups, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """The B bootstrap means of the two-level resampling described in the module docstring."""
    groups = [np.asarray(g, float) for g in groups if len(g)]
    if not groups:
        raise ValueError("bootstrap needs at least one non-empty group")
    rng = np.random.default_rng(seed)
    sizes = np.array([len(g) for g in groups])
    flat = np.concatenate(groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    means = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.integers(0, len(groups), len(groups)) if len(groups) > 1 else np.zeros(1, int)
        idx = np.concatenate([starts[g] + rng.integers(0, sizes[g], sizes[g]) for g in picked])
        means[b] = flat[idx].mean()
    return means


def bootstrap_ci(groups, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict:
    """The mean over seeds x items with its two-level bootstrap interval: `groups` holds one list of per-item values
    per seed (win outcomes, or paired differences of them). Returns mean, low, high, n items, seeds, method."""
    groups = [list(g) for g in groups if len(g)]
    flat = np.concatenate([np.asarray(g, float) for g in groups]) if groups else np.zeros(0)
    out = {
        "mean": float(flat.mean()) if len(flat) else None,
        "low": None,
        "high": None,
        "n": int(len(flat)),
        "seeds": len(groups),
        "method": BOOTSTRAP_METHOD.format(b=n_boot) + ("" if len(groups) > 1 else " (one seed: items only)"),
    }
    if len(flat) >= 2:
        means = bootstrap_means(groups, n_boot, seed)
        lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
        out["low"], out["high"] = float(lo), float(hi)
    return out


def win_rate_ci(groups, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict:
    """A win rate over seeds x prompts (`groups`: per seed, the per-prompt outcomes 1 / ½ / 0): `bootstrap_ci`
    plus the number of decisive pairs (outcome ≠ ½) and of ties."""
    out = bootstrap_ci(groups, level, n_boot, seed)
    flat = np.concatenate([np.asarray(g, float) for g in groups if len(g)]) if out["n"] else np.zeros(0)
    return {**out, "decisive": int((flat != 0.5).sum()), "ties": int((flat == 0.5).sum())}


def paired_differences(a_runs: dict, b_runs: dict, judge: str, dim: str) -> list[list[float]]:
    """Per seed both variants ran (`{seed: {"outcomes": {judge: {dim: [...]}}}}`, eval-flow's per-prompt outcomes):
    outcome of a minus outcome of b, prompt by prompt (both judged on the same prompts and noise)."""
    diffs = []
    for seed in sorted(set(a_runs) & set(b_runs)):
        a, b = (runs[seed]["outcomes"][judge].get(dim, []) for runs in (a_runs, b_runs))
        if len(a) != len(b):
            raise ValueError(f"seed {seed}: the variants were judged on different prompts ({len(a)} vs {len(b)})")
        diffs.append([x - y for x, y in zip(a, b)])
    return diffs


VERDICTS = ("holds", "contradicted", "undecided at this budget")


def verdict(ci: dict, null: float = 0.5, better: str = "above") -> str:
    """A claim "the effect is `better` (above / below) `null`" against an interval: holds when the interval lies
    wholly on the claimed side, contradicted when wholly on the other side, else undecided at this budget."""
    if better not in ("above", "below"):
        raise ValueError(f"better must be 'above' or 'below', got {better!r}")
    side = excludes(ci, null)
    if side in ("above", "below"):
        return "holds" if side == better else "contradicted"
    return "undecided at this budget"
