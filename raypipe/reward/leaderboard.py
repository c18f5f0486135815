"""The VideoGen-RewardBench leaderboard table from eval-reward's metrics. Pure: numpy, no Ray.

    report = dimension_report(h, m)                    # pairwise_report (+ "official" block)
    report["by_model"] = by_model_reports(h, m, a, b)  # {generator: the same report over its pairs}
    text = leaderboard_markdown(metrics)               # Markdown: the leaderboard, then per generator

A generator's pairs are the pairs where it is `A_model` OR `B_model` (a pair of two videos from the same
generator counts once; a pair whose model name is null counts for no generator). Labels and margins keep the
manifest's orientation (A − B); both accuracies are unchanged by swapping A and B, since h and m flip together.
"""

from __future__ import annotations

import math

import numpy as np

from raypipe.reward.metrics import official_report, pairwise_report

__all__ = ["dimension_report", "by_model_reports", "leaderboard_markdown", "table_dimensions"]

W_O, W = "w/o ties", "w/ ties"


def dimension_report(h, m, official: bool = True) -> dict:
    """`pairwise_report(h, m)` plus, when `official`, `"official": official_report(h, m)`."""
    report = pairwise_report(h, m)
    if official:
        report["official"] = official_report(h, m)
    return report


def by_model_reports(h, m, model_a, model_b, official: bool = True) -> dict[str, dict]:
    """{generator name: dimension_report over the pairs where it is A or B}, names (as str) sorted; None skipped."""
    h, m = np.asarray(h), np.asarray(m)
    a, b = ([None if x is None else str(x) for x in col] for col in (model_a, model_b))
    if not len(a) == len(b) == len(h):
        raise ValueError(f"model_a, model_b, h must have equal length, got {len(a)}, {len(b)}, {len(h)}")
    names = sorted({x for x in a + b if x is not None})
    out = {}
    for name in names:
        mask = np.array([x == name or y == name for x, y in zip(a, b)], dtype=bool)
        out[name] = dimension_report(h[mask], m[mask], official)
    return out


def table_dimensions(metrics: dict) -> list[str]:
    """The dimensions with a report in `metrics`, `Overall` first, then in metrics order."""
    names = [k for k, v in metrics.items() if isinstance(v, dict) and "acc_with_ties" in v]
    return sorted(names, key=lambda k: k != "Overall")  # stable: the rest keep their order


def _pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table padded to column width (reads as a table in a terminal too); first column left."""
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths)))

    rule = "|" + "|".join(("-" * (w + 1) + ":") if j else ":" + "-" * (w + 1) for j, w in enumerate(widths)) + "|"
    return [line(header) + " |", rule, *[line(r) + " |" for r in rows]]


def _main_table(metrics: dict, dims: list[str], official: bool) -> list[str]:
    header = ["dimension", W_O, W] + ([f"official {W_O}", f"official {W}"] if official else []) + ["n pairs"]
    rows = []
    for dim in dims:
        r = metrics[dim]
        cells = [dim, _pct(r["acc_without_ties"]), _pct(r["acc_with_ties"])]
        if official:
            o = r.get("official") or {}
            cells += [_pct(o.get("accuracy_without_ties")), _pct(o.get("accuracy_with_ties"))]
        rows.append(cells + [str(r["n"])])
    return _markdown(header, rows)


def _model_table(metrics: dict, dims: list[str]) -> list[str]:
    models = sorted({name for d in dims for name in metrics[d].get("by_model", {})})
    header = ["model", "n pairs"] + [f"{d} {w}" for d in dims for w in ("w/o", "w/")]  # narrow: many columns
    rows = []
    for name in models:
        per = [metrics[d].get("by_model", {}).get(name) for d in dims]
        cells = [name, str(per[0]["n"] if per[0] is not None else 0)]
        for p in per:
            cells += [_pct(None), _pct(None)] if p is None else [_pct(p["acc_without_ties"]), _pct(p["acc_with_ties"])]
        rows.append(cells)
    return _markdown(header, rows)


def leaderboard_markdown(metrics: dict, official: bool = True) -> str:
    """The leaderboard (one row per dimension, accuracies in %) and, when any dimension has `by_model`, the
    per-generator table; Markdown, the same text eval-reward prints and writes to `leaderboard.md`."""
    dims = table_dimensions(metrics)
    lines = ["## Pairwise accuracy (%)", "", *_main_table(metrics, dims, official), ""]
    lines.append(f"{W}: tie-calibrated, max over ε, equal |m| switch together (SPEC §4).")
    if official:
        lines.append("official: VideoAlign calc_accuracy.py (pair-by-pair sweep; may split equal |m|).")
    if any("by_model" in metrics[d] for d in dims):
        lines += ["", "## By generator (%): pairs where the model is A or B", ""]
        lines += _model_table(metrics, dims)
        lines += ["", f"w/o, w/: {W_O}, {W}. n pairs: of {dims[0]} (scored, labelled, the model on either side)."]
    return "\n".join(lines) + "\n"
