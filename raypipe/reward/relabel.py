"""Relabel's tables, without Ray: tie thresholds, model labels from margins, the resume state under
OUT/_progress, and the assembly of one output row per input row (`raypipe.recipes.relabel` drives them)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from raypipe.config import ConfigError
from raypipe.data.inputs import RelabelInput
from raypipe.data.location import Location
from raypipe.data.manifest import label_name
from raypipe.reward.scoring import VideoIndex, normalize, overall

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


def model_labels(margins: np.ndarray, epsilon: float) -> pa.Array:
    """A when margin > ε, B when margin < −ε, same when |margin| ≤ ε or the scores are equal (so also with
    ε = −1, "never a tie"); null for a missing (NaN) margin. The names are `label_name`'s (SPEC §2.1)."""
    m = np.asarray(margins, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        same = (np.abs(m) <= epsilon) | (m == 0)
        names = np.where(same, label_name(0), np.where(m > 0, label_name(1), label_name(-1)))
    return pa.array(names.astype(object), pa.string(), mask=np.isnan(m))


def scan(inp: RelabelInput) -> tuple[VideoIndex, int, str]:
    """The first walk over the input (before any Ray work, so a bad row fails fast): (the distinct videos, the
    number of rows, the input's fingerprint). The fingerprint hashes the kind and every row's URIs and prompt, in
    a form that does not depend on batch sizes; a restart must see the same one."""
    index = VideoIndex()
    columns = [*inp.uri_columns(), "prompt"]
    hashes = {c: (hashlib.sha256(), hashlib.sha256()) for c in columns}  # per column: bytes, lengths
    rows = 0
    for batch in inp.batches():
        index.ids(batch, inp.uri_columns())
        for col in columns:
            values = pc.cast(pc.fill_null(batch.column(col), ""), pa.large_string()).combine_chunks()
            offsets = np.frombuffer(values.buffers()[1], np.int64)[values.offset : values.offset + len(values) + 1]
            if len(values):
                hashes[col][0].update(memoryview(values.buffers()[2])[offsets[0] : offsets[-1]])
                hashes[col][1].update(np.diff(offsets).tobytes())
        rows += batch.num_rows
    whole = hashlib.sha256(inp.kind.encode())
    for data, lengths in hashes.values():
        whole.update(data.digest() + lengths.digest())
    return index, rows, whole.hexdigest()[:16]


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
    rows: pa.Table,
    per_side: dict[str, np.ndarray],
    scored: pa.Table,
    dimensions,
    norm_stats,
    epsilon: dict[str, float],
) -> pa.Table:
    """One output row per input row of `rows` (a batch; see the module docstring for the columns). `scored` is
    `one_result_per_video`'s table; `per_side` the video_id of every row per side ("" for pointwise)."""
    raw = np.stack(
        [scored.column(f"score_{d}").to_numpy(zero_copy_only=False).astype(np.float64) for d in dimensions], axis=1
    )
    sides = {side: raw[vid] for side, vid in per_side.items()}
    if set(per_side) == {""}:
        cols = _pointwise_columns(sides[""], dimensions, norm_stats)
    else:
        cols = _pair_columns(sides["A"], sides["B"], dimensions, norm_stats, epsilon)
    return with_result_columns(rows, scored, per_side, cols)


def with_result_columns(rows: pa.Table, scored: pa.Table, per_side, cols: dict[str, pa.Array], keep=False):
    """`rows` + `error`, `error_message` + `cols`. An input column of a result's name (a re-relabelled output) is
    replaced, or with `keep` kept as `input_<name>`."""
    errors, messages = row_errors_of(scored, per_side, rows.num_rows)
    for name in ("error", "error_message"):
        if name in rows.column_names:
            rows = rows.drop_columns([name])
    for name in cols:
        if name in rows.column_names:
            if keep:
                rows = rows.rename_columns([f"input_{c}" if c == name else c for c in rows.column_names])
            else:
                rows = rows.drop_columns([name])
    rows = rows.append_column("error", errors).append_column("error_message", messages)
    for name, arr in cols.items():
        rows = rows.append_column(name, arr)
    return rows


def one_result_per_video(scored: pa.Table, n_videos: int) -> pa.Table:
    """The scored videos in video_id order, one row each (a resumed run may hold a video twice); every one of the
    `n_videos` videos must be there."""
    ids = scored.column("video_id").to_numpy() if scored is not None else np.zeros(0, np.int64)
    order = np.argsort(ids, kind="stable")
    first = order[np.concatenate([[True], np.diff(ids[order]) != 0])] if len(ids) else order  # keep 1 per id
    scored = scored.take(pa.array(first)) if scored is not None else None
    ids = ids[first]
    if len(ids) != n_videos or (len(ids) and not np.array_equal(ids, np.arange(n_videos))):
        missing = sorted(set(range(n_videos)) - set(ids.tolist()))
        raise RuntimeError(f"{len(missing)} videos have no result (e.g. video_id {missing[:3]}); rerun to finish")
    return scored


def row_errors_of(scored: pa.Table, per_side: dict[str, np.ndarray], n_rows: int) -> tuple[pa.Array, pa.Array]:
    """Per input row: the first failing side's error kind, and every failing side's message ("A: …| B: …")."""
    failed = np.asarray(scored.column("error").is_valid()).astype(bool) if scored.num_rows else np.zeros(0, bool)
    bad = np.zeros(n_rows, bool)
    for vid in per_side.values():
        bad |= failed[vid]
    row_errors: list[str | None] = [None] * n_rows
    row_messages: list[str | None] = [None] * n_rows
    rows = np.flatnonzero(bad)
    if len(rows):  # error rows are few: only they are walked one by one
        errors = scored.column("error").to_pylist()
        messages = scored.column("error_message").to_pylist()
        for i in rows.tolist():
            for side, vid in per_side.items():
                v = int(vid[i])
                if errors[v] is not None:
                    row_errors[i] = row_errors[i] or errors[v]
                    text = f"{side}: {messages[v]}" if side else messages[v]
                    row_messages[i] = text if row_messages[i] is None else row_messages[i] + " | " + text
    return pa.array(row_errors, pa.string()), pa.array(row_messages, pa.string())


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
    cols.update({f"model_{name}": model_labels(m, epsilon.get(name, 0.0)) for name, m in margins.items()})
    return cols


class PartWriter:
    """Output rows appended a batch at a time and written as row-ordered Parquet parts of `rows_per_part` rows,
    each part whole (`Location`), so at most one part's rows are held. Parts of an earlier run are removed first."""

    def __init__(self, out: Location, rows_per_part: int):
        self.out, self.step = out, max(1, int(rows_per_part))
        for old in out.names("part-*.parquet"):
            out.delete(old)
        self.pending: list[pa.Table] = []
        self.held = 0
        self.names: list[str] = []

    def append(self, rows: pa.Table) -> None:
        self.pending.append(rows)
        self.held += rows.num_rows
        while self.held >= self.step:
            self._write(self.step)

    def _write(self, n: int) -> None:
        if not self.pending:
            return
        table = pa.concat_tables(self.pending, promote_options="default")
        name = f"part-{len(self.names):05d}.parquet"
        self.out.write_parquet(name, table.slice(0, n))
        self.names.append(name)
        rest = table.slice(n)
        self.pending, self.held = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> list[str]:
        """Write what is left as the last part; the part names (none when nothing was appended)."""
        if self.held or not self.names:
            self._write(self.held)
        return self.names


def write_parts(table: pa.Table, out: Location, rows_per_part: int) -> list[str]:
    """A whole table as row-ordered Parquet parts (old parts removed first; each written whole)."""
    writer = PartWriter(out, rows_per_part)
    writer.append(table)
    return writer.close()


def video_errors(scored: pa.Table) -> dict[str, int]:
    if scored is None:
        return {}
    ids = scored.column("video_id").to_pylist()
    errs = scored.column("error").to_pylist()
    seen: dict[int, str | None] = {}
    for v, e in zip(ids, errs):
        seen.setdefault(v, e)
    return dict(sorted(Counter(e for e in seen.values() if e is not None).items()))
