"""Critic relabelling's table assembly (the critic's side of `raypipe relabel --critic`), without Ray.

    answered = with_lift_weight(one_result_per_video(answered, n_videos), dims)
    table = assemble_critic(rows, per_side, answered, dims)   # one row per input row of a batch

Columns added to the input's (the same `error` / `error_message` rule as VideoReward relabelling):
- pointwise / videos: `rating_<DIM>` (Good / Normal / Bad), `reason_<DIM>`, `lift_weight` (SPEC §8: the mean over
  dimensions of Good 0.9 / Normal 0.2 / Bad 0.05; null on error rows);
- pairs: `rating_A_<DIM>`, `reason_A_<DIM>`, `rating_B_<DIM>`, `reason_B_<DIM>`, `lift_weight_A`, `lift_weight_B`.
An input column with one of these names (a pointwise manifest's human `reason_<DIM>`) is kept as `input_<name>`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raypipe.data.ratings import lift_weight
from raypipe.reward.relabel import with_result_columns


def critic_columns(answered: pa.Table, vid: np.ndarray, dims, side: str) -> dict[str, pa.Array]:
    """The rating, reason and LiFT weight columns of one side (`side` "" for pointwise) for video ids `vid`;
    `answered` is `with_lift_weight`'s table."""
    tag = f"_{side}" if side else ""
    take = pa.array(vid)
    cols: dict[str, pa.Array] = {}
    for d in dims:
        # typed: a run where every video failed has all-null columns, which must still read as strings
        cols[f"rating{tag}_{d}"] = answered.column(f"rating_{d}").take(take).combine_chunks().cast(pa.string())
        cols[f"reason{tag}_{d}"] = answered.column(f"reason_{d}").take(take).combine_chunks().cast(pa.string())
    cols[f"lift_weight{tag}"] = answered.column("lift_weight").take(take).combine_chunks().cast(pa.float64())
    return cols


def with_lift_weight(answered: pa.Table, dims, weight_map=None) -> pa.Table:
    """Each answered video's LiFT weight (SPEC §8), computed once per video rather than once per row."""
    ratings = {d: answered.column(f"rating_{d}").to_pylist() for d in dims}
    weights = [lift_weight({d: ratings[d][v] for d in dims}, weight_map) for v in range(answered.num_rows)]
    return answered.append_column("lift_weight", pa.array(weights, pa.float64()))


def assemble_critic(rows: pa.Table, per_side: dict, answered: pa.Table, dims) -> pa.Table:
    """One output row per input row of `rows` (a batch): the input columns, `error`, `error_message` and the
    critic's columns of every side. `answered`: `one_result_per_video` then `with_lift_weight`."""
    cols: dict[str, pa.Array] = {}
    for side, vid in per_side.items():
        cols.update(critic_columns(answered, vid, dims, side))
    # an input column of the same name (a human reason_<DIM>, an earlier run's rating) is kept as input_<name>
    return with_result_columns(rows, answered, per_side, cols, keep=True)
