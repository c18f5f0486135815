"""Relabel's tables, without Ray: tie thresholds, model labels from margins, the resume state under
OUT/_progress, and the assembly of one output row per input row (`raypipe.recipes.relabel` drives them)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import yaml

from raypipe.config import ConfigError
from raypipe.data.inputs import RelabelInput
from raypipe.data.location import Location
from raypipe.data.manifest import label_name
from raypipe.reward.scoring import distinct_videos, normalize, overall

PROGRESS_DIR = "_progress"
STATE_FILE = "state.json"
SHARD_GLOB = "videos-*.parquet"


# --- pure pieces -------------------------------------------------------------------------------------------
def parse_tie_epsilon(value, dimensions) -> dict[str, float] | None:
    """0.1 -> every dimension (and Overall); {VQ: 0.1, MQ: 0.2} (or its YAML text) -> those; None -> None."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {d: float(value) for d in [*dimensions, "Overall"]}
        if not isinstance(value, dict):
            raise ValueError
        out = {str(k): float(v) for k, v in value.items()}
    except (ValueError, TypeError, yaml.YAMLError):
        raise ConfigError(f"tie_epsilon must be a number or a mapping like {{VQ: 0.1}} (got {value!r})") from None
    unknown = sorted(set(out) - {*dimensions, "Overall"})
    if unknown:
        raise ConfigError(f"tie_epsilon names unknown dimensions {unknown} (checkpoint has {list(dimensions)})")
    return out


def model_labels(margins: np.ndarray, epsilon: float) -> list[str | None]:
    """A when margin > ε, B when margin < −ε, same when |margin| ≤ ε or the scores are equal (so also with
    ε = −1, "never a tie"); None for a missing (NaN) margin. The names are `label_name`'s (SPEC §2.1)."""
    out: list[str | None] = []
    for m in np.asarray(margins, dtype=np.float64):
        if np.isnan(m):
            out.append(None)
        else:
            out.append(label_name(0 if abs(m) <= epsilon or m == 0 else (1 if m > 0 else -1)))
    return out


def video_table(inp: RelabelInput) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """(distinct videos: video_id, uri, prompt; per side, the video_id of every input row)."""
    videos, per_column = distinct_videos(inp.table, inp.uri_columns())
    return videos, dict(zip(inp.sides, per_column.values()))


# --- resume state ------------------------------------------------------------------------------------------
class Progress:
    """Finished videos under OUT/_progress (a local folder or an object-store prefix): `state.json` (what run this
    is) + `videos-NNNNNN.parquet` shards, each written whole (`Location`), so a kill leaves whole shards only. A
    shard that cannot be read all the same (cut by a crash of the disk or the store) is set aside: its videos are
    scored again, and `skipped` names it."""

    def __init__(self, out: Location, state: dict):
        self.dir = out.child(PROGRESS_DIR).mkdir()
        if self.dir.exists(STATE_FILE):
            old = json.loads(self.dir.read_text(STATE_FILE))
            if old.get("fingerprint") != state["fingerprint"] or old.get("checkpoint") != state["checkpoint"]:
                raise ConfigError(
                    f"{out} holds a different relabel run (input or checkpoint changed); use a new out or delete {out}"
                )
            state = {**old, "resumes": old.get("resumes", 0) + 1}
        else:
            state = {**state, "resumes": 0}
        self.state = state
        self.dir.write_text(STATE_FILE, json.dumps(state, indent=2))
        self.skipped: list[str] = []
        names = self.dir.names(SHARD_GLOB)
        self.next_index = 1 + max([int(n[len("videos-") : -len(".parquet")]) for n in names] or [-1])

    def shards(self) -> list[str]:
        return [n for n in self.dir.names(SHARD_GLOB) if n not in self.skipped]

    def _read(self, name: str, columns=None) -> pa.Table | None:
        try:
            return self.dir.read_parquet(name, columns=columns)
        except pa.ArrowInvalid:  # not a whole Parquet file; a store that cannot be reached raises LocationError
            self.skipped.append(name)
            return None

    def done_ids(self) -> set[int]:
        done: set[int] = set()
        for shard in self.shards():
            table = self._read(shard, ["video_id"])
            if table is not None:
                done.update(table.column("video_id").to_pylist())
        return done

    def append(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.dir.write_parquet(f"videos-{self.next_index:06d}.parquet", table)
        self.next_index += 1

    def read_all(self) -> pa.Table:
        tables = [t for t in (self._read(s) for s in self.shards()) if t is not None]
        return pa.concat_tables(tables, promote_options="default") if tables else None


# --- assembly ----------------------------------------------------------------------------------------------
def _float_column(values: np.ndarray) -> pa.Array:
    return pa.array(values, pa.float64(), mask=np.isnan(values))


def assemble(
    inp: RelabelInput,
    per_side: dict[str, np.ndarray],
    scored: pa.Table,
    dimensions,
    norm_stats,
    epsilon: dict[str, float],
) -> pa.Table:
    """One output row per input row, row_id order (see the module docstring for the columns)."""
    scored = one_result_per_video(scored, per_side)
    raw = np.stack(
        [scored.column(f"score_{d}").to_numpy(zero_copy_only=False).astype(np.float64) for d in dimensions], axis=1
    )
    sides = {side: raw[vid] for side, vid in per_side.items()}
    row_errors, row_messages = row_errors_of(scored, per_side, inp.table.num_rows)
    if inp.kind != "pairs":
        cols = _pointwise_columns(sides[""], dimensions, norm_stats)
    else:
        cols = _pair_columns(sides["A"], sides["B"], dimensions, norm_stats, epsilon)
    table = inp.table
    for name in [*cols, "error", "error_message"]:
        if name in table.column_names:  # a re-relabelled output: the new result replaces the old column
            table = table.drop_columns([name])
    table = table.append_column("error", pa.array(row_errors, pa.string()))
    table = table.append_column("error_message", pa.array(row_messages, pa.string()))
    for name, arr in cols.items():
        table = table.append_column(name, arr)
    return table


def one_result_per_video(scored: pa.Table, per_side: dict[str, np.ndarray]) -> pa.Table:
    """The scored videos in video_id order, one row each (a resumed run may hold a video twice); every video the
    input needs must be there."""
    ids = scored.column("video_id").to_numpy()
    order = np.argsort(ids, kind="stable")
    first = order[np.concatenate([[True], np.diff(ids[order]) != 0])] if len(ids) else order  # keep 1 per id
    scored = scored.take(pa.array(first))
    ids = scored.column("video_id").to_numpy()
    n_videos = int(max(int(v.max()) for v in per_side.values()) + 1)
    if len(ids) != n_videos or (len(ids) and not np.array_equal(ids, np.arange(n_videos))):
        missing = sorted(set(range(n_videos)) - set(ids.tolist()))
        raise RuntimeError(f"{len(missing)} videos have no result (e.g. video_id {missing[:3]}); rerun to finish")
    return scored


def row_errors_of(scored: pa.Table, per_side: dict[str, np.ndarray], n_rows: int) -> tuple[list, list]:
    """Per input row: the first failing side's error kind, and every failing side's message."""
    errors = scored.column("error").to_pylist()
    messages = scored.column("error_message").to_pylist()
    row_errors: list[str | None] = [None] * n_rows
    row_messages: list[str | None] = [None] * n_rows
    for side, vid in per_side.items():
        for i, v in enumerate(vid.tolist()):
            if errors[v] is not None:
                row_errors[i] = row_errors[i] or errors[v]
                text = f"{side}: {messages[v]}" if side else messages[v]
                row_messages[i] = text if row_messages[i] is None else row_messages[i] + " | " + text
    return row_errors, row_messages


def _pointwise_columns(s: np.ndarray, dimensions, norm_stats) -> dict[str, pa.Array]:
    cols = {f"score_{d}": _float_column(s[:, j]) for j, d in enumerate(dimensions)}
    if norm_stats is not None:
        norm = normalize(s, norm_stats, dimensions)
        cols.update({f"norm_{d}": _float_column(norm[:, j]) for j, d in enumerate(dimensions)})
        cols["Overall"] = _float_column(overall(norm))
    return cols


def _pair_columns(a: np.ndarray, b: np.ndarray, dimensions, norm_stats, epsilon) -> dict[str, pa.Array]:
    cols = {
        f"score_{side}_{d}": _float_column(s[:, j])
        for side, s in (("A", a), ("B", b))
        for j, d in enumerate(dimensions)
    }
    margins = {d: a[:, j] - b[:, j] for j, d in enumerate(dimensions)}
    if norm_stats is not None:
        oa, ob = overall(normalize(a, norm_stats, dimensions)), overall(normalize(b, norm_stats, dimensions))
        cols["overall_A"], cols["overall_B"] = _float_column(oa), _float_column(ob)
        margins["Overall"] = oa - ob
    cols.update({f"margin_{name}": _float_column(m) for name, m in margins.items()})
    cols.update(
        {f"model_{name}": pa.array(model_labels(m, epsilon.get(name, 0.0)), pa.string()) for name, m in margins.items()}
    )
    return cols


def write_parts(table: pa.Table, out: Location, rows_per_part: int) -> list[str]:
    """Row-ordered Parquet parts (old parts removed first; each written whole)."""
    for old in out.names("part-*.parquet"):
        out.delete(old)
    step = max(1, int(rows_per_part))
    n = max(1, -(-table.num_rows // step))
    names = []
    for k in range(n):
        name = f"part-{k:05d}.parquet"
        out.write_parquet(name, table.slice(k * step, step))
        names.append(name)
    return names


def video_errors(scored: pa.Table) -> dict[str, int]:
    if scored is None:
        return {}
    ids = scored.column("video_id").to_pylist()
    errs = scored.column("error").to_pylist()
    seen: dict[int, str | None] = {}
    for v, e in zip(ids, errs):
        seen.setdefault(v, e)
    return dict(sorted(Counter(e for e in seen.values() if e is not None).items()))
