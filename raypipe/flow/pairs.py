"""Training data for the generator: fixed-shape clips and preference pairs (SPEC §5).

    clip = generator_clip(uri, ClipConfig(frames=9, height=56, width=56))   # uint8 [9, 56, 56, 3] | VideoError
    pairs, counts = pairs_from_labels(manifest.table, {"MQ": 1.0})          # human / SynthPref labels
    pairs, counts = pairs_from_margins(relabeled, {"VQ": 1.0, "MQ": 1.0}, min_margin=0.1)   # relabel output

Multi-dimensional preferences are combined by linear scalarisation r = Σ_d w_d·r_d over the weighted
dimensions: with labels r_d = +1 (A) / −1 (B) / 0 (tie); with model margins r_d = margin_d = r_A,d − r_B,d.
A pair becomes (winner, loser) when r > min_margin (A wins) or r < −min_margin (B wins); otherwise it is
dropped and counted (a tie under these weights carries no preference). A label missing on a weighted dimension
drops the pair too, as does an error row. Output columns: `uri_w`, `uri_l`, `prompt`, `r` (|scalarised|), and
`row_id` of the source row.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from raypipe.video.decode import VideoError, read_all_frames, resize_frames


@dataclasses.dataclass
class ClipConfig:
    """How the generator sees a video: `frames` evenly spaced over the clip, resized to height x width."""

    frames: int = 9
    height: int = 56
    width: int = 56


def generator_clip(uri: str, cfg: ClipConfig) -> np.ndarray | VideoError:
    """uint8 [frames, height, width, 3]: `frames` indices linspace(0, T-1) of the whole clip, resized."""
    frames = read_all_frames(uri)
    if isinstance(frames, VideoError):
        return frames
    if len(frames) < cfg.frames:
        return VideoError("too_short", f"{len(frames)} frames, the generator needs {cfg.frames}", uri)
    idx = np.round(np.linspace(0, len(frames) - 1, cfg.frames)).astype(int)
    return resize_frames(frames[idx], cfg.height, cfg.width)


def _check_weights(weights: dict[str, float]) -> None:
    if not weights or not any(float(w) != 0 for w in weights.values()):
        raise ValueError(f"scalarisation weights need at least one non-zero dimension, got {weights!r}")


def _pairs(table: pa.Table, r: np.ndarray, valid: np.ndarray, min_margin: float) -> tuple[pa.Table, dict]:
    a_wins = valid & (r > min_margin)
    b_wins = valid & (r < -min_margin)
    keep = np.flatnonzero(a_wins | b_wins)
    uri_a, uri_b = table.column("uri_A").to_numpy(zero_copy_only=False), table.column("uri_B").to_numpy(
        zero_copy_only=False)
    win = np.where(a_wins, uri_a, uri_b)[keep]
    lose = np.where(a_wins, uri_b, uri_a)[keep]
    out = pa.table({"row_id": table.column("row_id").take(pa.array(keep)),
                    "uri_w": pa.array(win.tolist(), pa.string()), "uri_l": pa.array(lose.tolist(), pa.string()),
                    "prompt": table.column("prompt").take(pa.array(keep)),
                    "r": pa.array(np.abs(r[keep]), pa.float64())})
    counts = {"rows": table.num_rows, "pairs": len(keep), "a_wins": int(a_wins.sum()), "b_wins": int(b_wins.sum()),
              "dropped_tie": int((valid & ~a_wins & ~b_wins).sum()), "dropped_unlabelled_or_error": int((~valid).sum())}
    return out, counts


def pairs_from_labels(table: pa.Table, weights: dict[str, float], min_margin: float = 0.0) -> tuple[pa.Table, dict]:
    """Pairs from a loaded preference manifest (`y_<DIM>` columns of `load_manifest`)."""
    _check_weights(weights)
    r = np.zeros(table.num_rows)
    valid = np.ones(table.num_rows, dtype=bool)
    for dim, w in weights.items():
        col = f"y_{dim}"
        if col not in table.column_names:
            raise KeyError(f"weighted dimension {dim!r} has no label column in the manifest")
        y = table.column(col).to_numpy(zero_copy_only=False)
        y = np.array([np.nan if v is None else v for v in y], dtype=np.float64) if y.dtype == object else \
            y.astype(np.float64)
        valid &= ~np.isnan(y) | (float(w) == 0)
        r += float(w) * np.nan_to_num(y)
    return _pairs(table, r, valid, min_margin)


def pairs_from_margins(table: pa.Table, weights: dict[str, float], min_margin: float = 0.0) -> tuple[pa.Table, dict]:
    """Pairs from `raypipe relabel` output on a preference manifest (`margin_<DIM>` columns, `error`)."""
    _check_weights(weights)
    r = np.zeros(table.num_rows)
    valid = np.ones(table.num_rows, dtype=bool)
    if "error" in table.column_names:
        valid &= np.array([e is None for e in table.column("error").to_pylist()])
    for dim, w in weights.items():
        col = f"margin_{dim}"
        if col not in table.column_names:
            raise KeyError(f"weighted dimension {dim!r} has no {col} column (relabel output expected)")
        m = np.array([np.nan if v is None else v for v in table.column(col).to_pylist()], dtype=np.float64)
        valid &= ~np.isnan(m) | (float(w) == 0)
        r += float(w) * np.nan_to_num(m)
    return _pairs(table, r, valid, min_margin)
