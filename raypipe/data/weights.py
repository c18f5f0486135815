"""Per-dimension weights and the scalarised reward r = Σ_d w_d · r_d (SPEC §5) — the one implementation every job
uses (pairs from labels or margins, Flow-RWR rewards, sample-pairs' best vs worst, guidance, generate's summary).

Weights are written one way everywhere: a mapping `{VQ: 0.1, TA: 0.8}` (YAML in a config file, the same text as a
`weights={VQ: 0.1, TA: 0.8}` override); dimensions left out weigh 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import yaml


def weight_vector(weights: Mapping | str | None, dims) -> dict[str, float]:
    """{dim: w} over every dimension of `dims` (missing ones 0) from a mapping, or its YAML text ("{TA: 1}");
    None or "" -> all 0. Unknown dimensions and non-finite weights are ValueErrors naming them."""
    if weights is None or weights == "":
        weights = {}
    if isinstance(weights, str):
        try:
            weights = yaml.safe_load(weights)
        except yaml.YAMLError:
            weights = None
        if not isinstance(weights, Mapping):
            raise ValueError("weights must be a mapping like {VQ: 0.1, MQ: 0.1, TA: 0.8}")
    dims = list(dims)
    out = {d: 0.0 for d in dims}
    for key, value in weights.items():
        if key not in dims:
            raise ValueError(f"unknown dimension {key!r} in weights (the reward model has {dims})")
        try:
            w = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"weight of {key} must be a number, got {value!r}") from None
        if not math.isfinite(w):
            raise ValueError(f"weight of {key} must be finite, got {value!r}")
        out[key] = w
    return out


def require_nonzero(weights: Mapping) -> None:
    """Scalarising needs at least one dimension with a non-zero weight."""
    if not weights or not any(float(w) != 0 for w in weights.values()):
        raise ValueError(f"scalarisation weights need at least one non-zero dimension, got {dict(weights)!r}")


def scalarize(scores: Mapping, weights: Mapping):
    """r = Σ_d w_d · scores[d] over the weighted dimensions; `scores[d]` may be a number, an array or a tensor.
    A dimension with a weight must have a score (KeyError naming it)."""
    missing = [d for d in weights if d not in scores]
    if missing:
        raise KeyError(f"no score for weighted dimension(s) {missing}")
    return sum(float(w) * scores[d] for d, w in weights.items())


def float_column(table: pa.Table, column: str) -> np.ndarray:
    """A numeric column as float64 with NaN for nulls."""
    return np.array([np.nan if v is None else v for v in table.column(column).to_pylist()], dtype=np.float64)


def scalarize_columns(table: pa.Table, weights: Mapping, column_of) -> tuple[np.ndarray, np.ndarray]:
    """(r, valid) per row: r = Σ_d w_d · value_d from the column `column_of(d)` names, and whether every dimension
    with a non-zero weight has a value (a missing value counts 0 in r). `column_of(d)` returns None for a
    dimension the table cannot score: KeyError naming it."""
    r = np.zeros(table.num_rows)
    valid = np.ones(table.num_rows, dtype=bool)
    for dim, w in weights.items():
        col = column_of(dim)
        if col is None or col not in table.column_names:
            raise KeyError(f"weighted dimension {dim!r} has no {col or 'score'} column")
        values = float_column(table, col)
        valid &= ~np.isnan(values) | (float(w) == 0)
        r += float(w) * np.nan_to_num(values)
    return r, valid
