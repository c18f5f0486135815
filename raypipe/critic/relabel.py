"""Critic relabelling's table assembly (the critic's side of `raypipe relabel --critic`), without Ray.

    table = assemble_critic(inp, per_side, answered, dims)   # one row per input row, row_id order

Columns added to the input's (the same `error` / `error_message` rule as VideoReward relabelling):
- pointwise / videos: `rating_<DIM>` (Good / Normal / Bad), `reason_<DIM>`, `lift_weight` (SPEC §8: the mean over
  dimensions of Good 0.9 / Normal 0.2 / Bad 0.05; null on error rows);
- pairs: `rating_A_<DIM>`, `reason_A_<DIM>`, `rating_B_<DIM>`, `reason_B_<DIM>`, `lift_weight_A`, `lift_weight_B`.
An input column with one of these names (a pointwise manifest's human `reason_<DIM>`) is kept as `input_<name>`.
"""

from __future__ import annotations

import pyarrow as pa

from raypipe.data.inputs import RelabelInput
from raypipe.data.ratings import lift_weight
from raypipe.reward.relabel import one_result_per_video, row_errors_of


def critic_columns(answered: pa.Table, vid, dims, side: str, weight_map=None) -> dict[str, pa.Array]:
    """The rating, reason and LiFT weight columns of one side (`side` "" for pointwise) for video ids `vid`."""
    tag = f"_{side}" if side else ""
    ids = vid.tolist()
    cols: dict[str, pa.Array] = {}
    ratings = {d: answered.column(f"rating_{d}").to_pylist() for d in dims}
    for d in dims:
        reasons = answered.column(f"reason_{d}").to_pylist()
        cols[f"rating{tag}_{d}"] = pa.array([ratings[d][v] for v in ids], pa.string())
        cols[f"reason{tag}_{d}"] = pa.array([reasons[v] for v in ids], pa.string())
    weights = [lift_weight({d: ratings[d][v] for d in dims}, weight_map) for v in ids]
    cols[f"lift_weight{tag}"] = pa.array(weights, pa.float64())
    return cols


def assemble_critic(inp: RelabelInput, per_side: dict, answered: pa.Table, dims, weight_map=None) -> pa.Table:
    """One output row per input row (row_id order): the input columns, `error`, `error_message` and the critic's
    columns of every side."""
    answered = one_result_per_video(answered, per_side)
    errors, messages = row_errors_of(answered, per_side, inp.table.num_rows)
    cols: dict[str, pa.Array] = {}
    for side, vid in per_side.items():
        cols.update(critic_columns(answered, vid, dims, side, weight_map))
    table = inp.table
    for name in ("error", "error_message"):
        if name in table.column_names:  # a re-relabelled output: the new result replaces the old column
            table = table.drop_columns([name])
    for name in cols:  # an input column of the same name (a human reason_<DIM>, an earlier run's rating) is kept
        if name in table.column_names:
            table = table.rename_columns([f"input_{c}" if c == name else c for c in table.column_names])
    table = table.append_column("error", pa.array(errors, pa.string()))
    table = table.append_column("error_message", pa.array(messages, pa.string()))
    for name, arr in cols.items():
        table = table.append_column(name, arr)
    return table
