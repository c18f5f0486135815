"""LiFT's training rows (SPEC §8): one row per video with its weight, real videos mixed in with their own weight.

    rows, counts = rating_rows(load_ratings(...), {"VQ": 1, "MQ": 1, "TA": 1})    # human (or SynthPref) ratings
    rows, counts = weight_rows(pq.read_table("rated/"), "lift_weight")             # critic relabel output
    rows, counts = weight_rows(table, "score_{side}_MQ", transform="sigmoid")       # any relabel column
    rows, counts = with_real(rows, counts, real_table, weight=0.9)

Rows: `uri`, `prompt`, `weight` (float64 ≥ 0), `is_real`. A rating-derived weight is the weighted mean
Σ_d w_d·map(rating_d) / Σ_d w_d (with equal w_d: LiFT's mean over dimensions; map Good 0.9 / Normal 0.2 /
Bad 0.05). Every input video is accounted for in `counts`: kept, or dropped as unrated / error / not finite.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from raypipe.config import ConfigError
from raypipe.data.ratings import DEFAULT_WEIGHT_MAP, check_weight_map

TRANSFORMS = ("none", "sigmoid")
ROW_SCHEMA = pa.schema(
    [("uri", pa.string()), ("prompt", pa.string()), ("weight", pa.float64()), ("is_real", pa.bool_())]
)


def _rows(uris, prompts, weights, real: bool) -> pa.Table:
    return pa.table(
        {
            "uri": pa.array(list(uris), pa.string()),
            "prompt": pa.array([p or "" for p in prompts], pa.string()),
            "weight": pa.array(np.asarray(weights, np.float64)),
            "is_real": pa.array([real] * len(uris), pa.bool_()),
        },
        schema=ROW_SCHEMA,
    )


def rating_weight(ratings: Mapping[str, str | None], dim_weights: Mapping[str, float], weight_map=None) -> float | None:
    """Σ_d w_d·map(r_d) / Σ_d w_d over the dimensions with w_d ≠ 0; None when one of them is unrated."""
    wm = check_weight_map(weight_map or DEFAULT_WEIGHT_MAP)
    used = {d: float(w) for d, w in dim_weights.items() if w}
    if not used or sum(used.values()) <= 0:
        raise ConfigError(f"data.weights must give the rated dimensions positive weights, got {dict(dim_weights)}")
    if any(ratings.get(d) not in wm for d in used):
        return None
    return sum(w * wm[ratings[d]] for d, w in used.items()) / sum(used.values())


def rating_rows(ratings: pa.Table, dim_weights: Mapping[str, float], weight_map=None) -> tuple[pa.Table, dict]:
    """Rows from a ratings table (`raypipe.data.ratings.load_ratings`: `uri`, `prompt`, `rating_<DIM>`)."""
    missing = [d for d, w in dim_weights.items() if w and f"rating_{d}" not in ratings.column_names]
    if missing:
        raise ConfigError(f"the ratings have no rating_<DIM> column for weighted dimension(s) {missing}")
    cols = {d: ratings.column(f"rating_{d}").to_pylist() for d, w in dim_weights.items() if w}
    weights = [rating_weight({d: cols[d][i] for d in cols}, dim_weights, weight_map) for i in range(ratings.num_rows)]
    keep = [i for i, w in enumerate(weights) if w is not None]
    uris, prompts = ratings.column("uri").to_pylist(), ratings.column("prompt").to_pylist()
    rows = _rows([uris[i] for i in keep], [prompts[i] for i in keep], [weights[i] for i in keep], False)
    return rows, {"videos": ratings.num_rows, "kept": len(keep), "dropped_unrated": ratings.num_rows - len(keep)}


def _transform(values: np.ndarray, transform: str) -> np.ndarray:
    if transform == "none":
        return values
    if transform == "sigmoid":
        return 1.0 / (1.0 + np.exp(-values))
    raise ConfigError(f"data.weight_transform must be one of {TRANSFORMS}, got {transform!r}")


def weight_rows(table: pa.Table, column: str = "lift_weight", transform: str = "none") -> tuple[pa.Table, dict]:
    """Rows from a table with one weight column per video: pointwise (`uri`, `prompt`, `column`) or pairs (`uri_A`,
    `uri_B`, `prompt` and the column per side: `column` with `{side}` in it, else `column_A` / `column_B`). Error
    rows and missing or non-finite weights are dropped and counted; a negative weight is a ConfigError (LiFT's
    weights are ≥ 0; `transform: sigmoid` maps any score into (0, 1))."""
    names = table.column_names
    sides = ("A", "B") if "uri_A" in names else ("",)
    uris, prompts, weights = [], [], []
    errors = table.column("error").to_pylist() if "error" in names else [None] * table.num_rows
    prompt = table.column("prompt").to_pylist() if "prompt" in names else [""] * table.num_rows
    dropped_error = dropped_missing = 0
    for side in sides:
        name = column.format(side=side) if "{side}" in column else (f"{column}_{side}" if side else column)
        if name not in names or f"uri{'_' + side if side else ''}" not in names:
            have = [c for c in names if not c.startswith(("reason", "input_"))]
            raise ConfigError(f"data.weight_column: the input has no column {name!r} (columns: {have})")
        values = table.column(name).to_pylist()
        side_uris = table.column(f"uri_{side}" if side else "uri").to_pylist()
        for i, value in enumerate(values):
            if errors[i] is not None:
                dropped_error += 1
            elif value is None or not math.isfinite(float(value)):
                dropped_missing += 1
            else:
                uris.append(side_uris[i]), prompts.append(prompt[i]), weights.append(float(value))
    w = _transform(np.asarray(weights, np.float64), transform)
    if (w < 0).any():
        raise ConfigError(
            f"{int((w < 0).sum())} weights in {column!r} are negative (min {w.min():.3g}); LiFT's weights are >= 0 — "
            "use a column in [0, 1] such as lift_weight, or data.weight_transform=sigmoid"
        )
    videos = table.num_rows * len(sides)
    counts = {"videos": videos, "kept": len(uris), "dropped_error": dropped_error, "dropped_no_weight": dropped_missing}
    return _rows(uris, prompts, w, False), counts


def with_real(rows: pa.Table, counts: dict, real: pa.Table, weight: float) -> tuple[pa.Table, dict]:
    """The rows plus every real video (`uri`, `prompt`) at `weight` (LiFT mixes real videos into the same loss)."""
    if not weight >= 0:
        raise ConfigError(f"train.real_weight must be >= 0, got {weight}")
    extra = _rows(real.column("uri").to_pylist(), real.column("prompt").to_pylist(), [weight] * real.num_rows, True)
    return pa.concat_tables([rows, extra]), {**counts, "real": real.num_rows}
