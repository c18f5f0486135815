"""Decoded-row tables (pyarrow, no Ray): split off error rows, read frame and tensor columns back as numpy.

Decoded pairs carry, per side S in {A, B}, `frames_S` (uint8 [T, H, W, 3], variable shape), `indices_S`,
`total_frames_S`, `video_fps_S`, `height_S`, `width_S`, plus `error` (null, or the error kind of the first side
that failed) and `error_message`; error rows stay in the stream with empty frames, so every manifest row comes out
exactly once (the decode stage that writes them is `raypipe.distributed.decode`). Generator clips are fixed-shape
`frames<sfx>` columns, latent-cache rows `latents<sfx>` + `text` (see `suffix`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SIDES = ("A", "B")


def metadata_columns(table: pa.Table) -> pa.Table:
    """A decoded-pairs table without its frame tensors (what gets written as per-row records)."""
    return table.drop_columns([c for c in table.column_names if c.startswith("frames_")])


def split_errors(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(rows that decoded, error rows) of a decoded-pairs batch."""
    is_error = pc.is_valid(table.column("error"))
    if not pc.any(is_error).as_py():  # the usual batch: no copy of its frame tensors (~20 ms per 8 pairs at 112 px)
        return table, table.slice(0, 0)
    return table.filter(pc.invert(is_error)), table.filter(is_error)


def frames_of(table: pa.Table, side: str) -> list[np.ndarray]:
    """The `frames_<side>` column of a pyarrow batch as a list of uint8 [T, H, W, 3] arrays."""
    return column_frames(table, f"frames_{side}")


def column_frames(table: pa.Table, column: str) -> list[np.ndarray]:
    """A frames column (see `raypipe.distributed.arrow.frames_column`) of a pyarrow batch as a list of uint8
    [T, H, W, 3] arrays."""
    out: list[np.ndarray] = []
    for chunk in table.column(column).chunks:
        values = chunk.to_numpy(zero_copy_only=False)
        out.extend(np.asarray(v) for v in values)
    return out


def without_errors(batch: pa.Table) -> tuple[pa.Table, int]:
    """(rows of a pyarrow batch whose `error` is null, number dropped); a batch without `error` is all good."""
    if "error" not in batch.column_names:
        return batch, 0
    good, bad = split_errors(batch)
    return good, bad.num_rows


def suffix(key: str) -> str:
    """Column suffix of a clip key: "w" -> "_w" (frames_w, latents_w); "" -> "" (frames, latents)."""
    return f"_{key}" if key else ""


def clips_of(batch: pa.Table, column: str) -> np.ndarray:
    """A fixed-shape frames column as one uint8 array [n, T, H, W, 3]."""
    return np.stack(column_frames(batch, column)) if batch.num_rows else np.zeros((0,), np.uint8)


def tensor_of(batch: pa.Table, column: str) -> np.ndarray:
    """A fixed-shape tensor column of a pyarrow batch as one ndarray [n, ...]."""
    chunks = [c.to_numpy() for c in batch.column(column).chunks]
    return np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)


def replace_column(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    """`table` with `column` as `name` (appended, or in place of an existing column of that name)."""
    if name in table.column_names:
        table = table.drop_columns([name])
    return table.append_column(name, column)
