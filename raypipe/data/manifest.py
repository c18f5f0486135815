"""Preference and pointwise manifests (SPEC §2.1, §2.2): read, validate, normalise labels.

Validation happens in the driver before any Ray work: a bad manifest fails with ManifestError naming the file,
the column and (where it is about one row) the 0-based row. Every input column is kept; we add
`row_id` (position in the manifest), resolved URIs and one normalised label column per dimension:
`y_<DIM>` (int8: +1 = A preferred, -1 = B preferred, 0 = tie, null = unlabelled and masked out of losses).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from raypipe.data.location import one_line
from raypipe.video.source import is_local, join_uri, local_path, resolve_filesystem

LABELS = {"a": 1, "b": -1, "same": 0, "tie": 0, "1": 1, "-1": -1, "0": 0}
LABEL_NAMES = {1: "A", -1: "B", 0: "same"}
POINTWISE_WORDS = {"good": 3.0, "normal": 2.0, "bad": 1.0}
PAIR_REQUIRED = ("path_A", "path_B", "prompt")
POINTWISE_REQUIRED = ("path", "prompt")
_NUMERIC_PREFIXES = ("fps_", "num_frames_", "MOS_")


class ManifestError(ValueError):
    def __init__(self, file: str, message: str, column: str | None = None, row: int | None = None):
        where = [f"manifest {file}"]
        if column is not None:
            where.append(f"column {column!r}")
        if row is not None:
            where.append(f"row {row}")
        super().__init__(", ".join(where) + ": " + message)
        self.file, self.column, self.row = file, column, row


@dataclass
class Manifest:
    """A validated manifest. `table` has the input columns plus row_id, uri columns and y_<DIM> labels."""

    table: pa.Table
    source: str
    kind: str  # "pairs" | "pointwise"
    dimensions: list[str]
    masked: dict[str, int] = field(default_factory=dict)  # per dimension: rows whose label was not understood

    def __len__(self) -> int:
        return self.table.num_rows


def normalize_label(value) -> int | None:
    """`A`/`B`/`same`/`tie` (any case) or 1/-1/0 -> +1/-1/0; anything else (incl. null) -> None (masked)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        if isinstance(value, float) and (math.isnan(value) or value != int(value)):
            return None
        value = str(int(value))
    return LABELS.get(str(value).strip().lower())


def label_name(y: int | None) -> str | None:
    """+1/-1/0 -> "A"/"B"/"same" (how raypipe writes labels; `normalize_label` reads them back); None -> None."""
    return None if y is None else LABEL_NAMES[int(y)]


def normalize_score(value) -> float | None:
    """Pointwise score: a finite number, or Good/Normal/Bad -> 3/2/1; else None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    text = str(value).strip()
    if text.lower() in POINTWISE_WORDS:
        return POINTWISE_WORDS[text.lower()]
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _open(source: str):
    """(filesystem or None for local, path) of a manifest; ManifestError when a local file is missing."""
    fs, path = (None, local_path(source)) if is_local(source) else resolve_filesystem(source)
    if fs is None and not os.path.exists(path):
        raise ManifestError(source, "file not found")
    return fs, path


def _format(source: str, fs, path: str) -> str:
    lower = path.lower()
    if lower.endswith((".csv", ".csv.gz", ".tsv")):
        return "csv"
    if lower.endswith((".parquet", ".pq")) or (fs is not None and fs.get_file_info(path).type == 3):
        return "parquet"
    raise ManifestError(source, "unknown manifest format: use .parquet or .csv")


def _csv_options(fs, path: str):
    """CSV parse/convert options with every column as text (types are checked per column, with the row named)."""
    import pyarrow.csv as pacsv

    parse = pacsv.ParseOptions(delimiter="\t" if path.lower().endswith(".tsv") else ",")
    with open(path, "rb") if fs is None else fs.open_input_stream(path) as f:
        header = pacsv.open_csv(f, parse_options=parse).schema.names
    return parse, pacsv.ConvertOptions(column_types={c: pa.string() for c in header}, strings_can_be_null=True)


def _unreadable(source: str, e: Exception) -> ManifestError:
    return ManifestError(source, f"unreadable: {one_line(e)}")


_READ_ERRORS = (pa.ArrowInvalid, pa.ArrowIOError, OSError, UnicodeDecodeError)


def read_table(source: str) -> pa.Table:
    """A .parquet or .csv/.tsv (every column as text) table from a local path or URI; ManifestError if not."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        fs, path = _open(source)
        if _format(source, fs, path) == "csv":
            parse, convert = _csv_options(fs, path)
            with open(path, "rb") if fs is None else fs.open_input_stream(path) as f:
                return pacsv.read_csv(f, parse_options=parse, convert_options=convert)
        return pq.read_table(path, filesystem=fs)
    except ManifestError:
        raise
    except _READ_ERRORS as e:
        raise _unreadable(source, e) from None


def table_columns(source: str) -> list[str]:
    """The column names of a manifest, read from its header or Parquet footer only."""
    import pyarrow.parquet as pq

    try:
        fs, path = _open(source)
        if _format(source, fs, path) == "csv":
            return list(_csv_options(fs, path)[1].column_types)
        if _is_folder(fs, path):  # a Parquet dataset folder (e.g. Spark's output)
            return list(_dataset(fs, path).schema.names)
        return list(pq.read_schema(path, filesystem=fs).names)
    except ManifestError:
        raise
    except _READ_ERRORS as e:
        raise _unreadable(source, e) from None


def iter_table(source: str, batch_rows: int = 65536) -> Iterator[pa.Table]:
    """A manifest's rows in order, a batch at a time (Parquet: up to `batch_rows` rows; CSV: a block of the file),
    so that a table larger than memory can be walked; ManifestError if it cannot be read."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        fs, path = _open(source)
        if _format(source, fs, path) == "csv":
            parse, convert = _csv_options(fs, path)
            with open(path, "rb") if fs is None else fs.open_input_stream(path) as f:
                reader = pacsv.open_csv(
                    f, parse_options=parse, convert_options=convert, read_options=pacsv.ReadOptions(block_size=8 << 20)
                )
                for batch in reader:
                    yield pa.Table.from_batches([batch])
            return
        if _is_folder(fs, path):  # its files in name order, each in order
            for batch in _dataset(fs, path).to_batches(batch_size=batch_rows, use_threads=False):
                yield pa.Table.from_batches([batch])
            return
        with open(path, "rb") if fs is None else fs.open_input_file(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
                yield pa.Table.from_batches([batch])
    except ManifestError:
        raise
    except _READ_ERRORS as e:
        raise _unreadable(source, e) from None


def _is_folder(fs, path: str) -> bool:
    import pyarrow.fs as pafs

    return os.path.isdir(path) if fs is None else fs.get_file_info(path).type == pafs.FileType.Directory


def _dataset(fs, path: str):
    """A Parquet dataset folder, its files sorted by name (the order `pq.read_table` reads them in)."""
    import pyarrow.dataset as pads

    return pads.dataset(path, filesystem=fs, format="parquet", exclude_invalid_files=False)


def _first(mask: pa.Array | pa.ChunkedArray) -> int | None:
    """Index of the first true value of a boolean array, or None."""
    i = pc.index(mask, True).as_py()
    return None if i is None or i < 0 else i


def _check_string_column(table: pa.Table, column: str, source: str, allow_empty: bool = False, offset: int = 0):
    col = table.column(column)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise ManifestError(source, f"must hold strings, has type {col.type}", column)
    null = _first(pc.is_null(col))
    empty = None if allow_empty else _first(pc.fill_null(pc.equal(pc.utf8_trim_whitespace(col), ""), False))
    bad = [(row, why) for row, why in ((null, "is null"), (empty, "is an empty string")) if row is not None]
    if bad:  # the first bad row, whichever way it is bad
        row, why = min(bad)
        raise ManifestError(source, why, column, offset + row)
    return col


def _cast_numeric(table: pa.Table, column: str, source: str, offset: int = 0) -> pa.Table:
    col = table.column(column)
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return table
    values = col.to_pylist()
    out = []
    for i, v in enumerate(values):
        if v is None or (isinstance(v, str) and not v.strip()):
            out.append(None)
            continue
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            raise ManifestError(source, f"expected a number, got {v!r}", column, offset + i) from None
    idx = table.schema.get_field_index(column)
    return table.set_column(idx, column, pa.array(out, pa.float64()))


def map_distinct(column: pa.Array | pa.ChunkedArray, fn, type_: pa.DataType) -> pa.Array:
    """`fn` applied to each distinct value of a column once (nulls included), spread back to every row: fast when
    rows repeat few values (many pairs over the same videos, labels)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    try:
        distinct = pc.unique(column)
        mapped = pa.array([fn(v) for v in distinct.to_pylist()], type_)
        return mapped.take(pc.index_in(column, value_set=distinct, skip_nulls=False))
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):  # lists, structs: row by row
        return pa.array([fn(v) for v in column.to_pylist()], type_)


def _resolve_uris(table: pa.Table, columns: tuple[str, ...], root: str) -> pa.Table:
    """`path_A` -> `uri_A`, `path` -> `uri`: relative paths joined to the video root."""
    for col in columns:
        uris = map_distinct(table.column(col), lambda v: join_uri(root, v), pa.string())
        table = table.append_column(col.replace("path", "uri", 1), uris)
    return table


def default_root(source: str) -> str:
    if is_local(source):
        return os.path.dirname(os.path.abspath(local_path(source)))
    return source.rsplit("/", 1)[0]


def manifest_kind(source: str, names) -> str:
    """ "pairs" or "pointwise" (a `path` column and no `path_A`); ManifestError when a required column is missing
    or a reserved one is there."""
    names = set(names)
    kind = "pointwise" if "path" in names and "path_A" not in names else "pairs"
    for column in POINTWISE_REQUIRED if kind == "pointwise" else PAIR_REQUIRED:
        if column not in names:
            raise ManifestError(source, f"required column is missing (have {sorted(names)})", column)
    if "row_id" in names:
        raise ManifestError(source, "is reserved (raypipe adds it)", "row_id")
    return kind


def validate_rows(table: pa.Table, source: str, kind: str, root: str, offset: int = 0) -> pa.Table:
    """One batch of a manifest's rows (starting at row `offset`) checked and extended: required strings present,
    numeric columns cast, `row_id` and the resolved `uri*` columns added. Labels are left as written."""
    required = POINTWISE_REQUIRED if kind == "pointwise" else PAIR_REQUIRED
    for column in required:
        _check_string_column(table, column, source, allow_empty=(column == "prompt"), offset=offset)
    for column in table.column_names:
        if column.startswith(_NUMERIC_PREFIXES):
            table = _cast_numeric(table, column, source, offset)
    table = table.append_column("row_id", pa.array(range(offset, offset + table.num_rows), pa.int64()))
    return _resolve_uris(table, ("path_A", "path_B") if kind == "pairs" else ("path",), root)


def iter_manifest(
    source: str, video_root: str | None = None, batch_rows: int = 65536
) -> tuple[str, Iterator[pa.Table]]:
    """(kind, the validated rows a batch at a time, as `validate_rows` makes them): a manifest walked without
    holding it in memory. The columns are checked now; a bad row raises ManifestError when its batch is read."""
    source = os.fspath(source)
    kind = manifest_kind(source, table_columns(source))
    root = video_root or default_root(source)

    def batches() -> Iterator[pa.Table]:
        offset = 0
        for raw in iter_table(source, batch_rows):
            yield validate_rows(raw, source, kind, root, offset)
            offset += raw.num_rows
        if offset == 0:
            raise ManifestError(source, "has no rows")

    return kind, batches()


def load_manifest(
    source: str,
    dimensions: list[str] | tuple[str, ...] = ("VQ", "MQ", "TA"),
    video_root: str | None = None,
    require_labels: bool = True,
) -> Manifest:
    """Read and validate a preference manifest (one row per pair) or, if it has a `path` column and no
    `path_A`, a pointwise manifest. Raises ManifestError before any cluster work."""
    source = os.fspath(source)
    table = read_table(source)
    names = set(table.column_names)
    if table.num_rows == 0:
        raise ManifestError(source, "has no rows")
    kind = manifest_kind(source, names)
    label_dims = [d for d in dimensions if d in names]
    if require_labels and not label_dims:
        raise ManifestError(source, f"no label column for any configured dimension {list(dimensions)}")
    table = validate_rows(table.combine_chunks(), source, kind, video_root or default_root(source))
    masked: dict[str, int] = {}
    for dim in label_dims:
        if kind == "pairs":
            arr = map_distinct(table.column(dim), normalize_label, pa.int8())
        else:
            arr = map_distinct(table.column(dim), normalize_score, pa.float64())
        n_bad = arr.null_count
        if n_bad == len(arr):
            example = next((v for v in table.column(dim).to_pylist() if v is not None), None)
            allowed = "A/B/same/tie or 1/-1/0" if kind == "pairs" else "numbers or Good/Normal/Bad"
            raise ManifestError(
                source,
                f"no row has a label this reader understands (first value {example!r}; allowed: {allowed})",
                dim,
                0,
            )
        masked[dim] = n_bad
        table = table.append_column(f"y_{dim}", arr)
    return Manifest(table, source, kind, list(dimensions), masked)


def label_counts(manifest: Manifest) -> dict[str, dict[str, int]]:
    """Per dimension: how many rows prefer A, prefer B, are ties, are masked."""
    out = {}
    for dim in manifest.dimensions:
        if f"y_{dim}" not in manifest.table.column_names or manifest.kind != "pairs":
            continue
        col = manifest.table.column(f"y_{dim}")
        counts = pc.value_counts(col).to_pylist()
        by = {c["values"]: c["counts"] for c in counts}
        out[dim] = {"A": by.get(1, 0), "B": by.get(-1, 0), "tie": by.get(0, 0), "masked": col.null_count}
    return out


def label_shares(table: pa.Table, dimensions) -> dict[str, dict[str, float]]:
    """Per dimension: the share of rows labelled A, B and tie (masked rows count in none)."""
    out = {}
    for dim in dimensions:
        if dim not in table.column_names:
            continue
        values = [normalize_label(v) for v in table.column(dim).to_pylist()]
        n = max(1, len(values))
        out[dim] = {
            "A": round(values.count(1) / n, 3),
            "B": round(values.count(-1) / n, 3),
            "tie": round(values.count(0) / n, 3),
        }
    return out
