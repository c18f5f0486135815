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

import numpy as np
import pyarrow as pa

from raypipe.config import ClipConfig, ConfigError
from raypipe.data.weights import require_nonzero, scalarize_columns
from raypipe.video.decode import VideoError, read_all_frames, resize_frames
from raypipe.video.synth import make_prompt

ALGOS = ("pretrain", "sft", "dpo", "rwr", "lift")  # lift's rows: raypipe.flow.lift


def generator_clip(uri: str, cfg: ClipConfig) -> np.ndarray | VideoError:
    """uint8 [frames, height, width, 3]: `frames` indices linspace(0, T-1) of the whole clip, resized."""
    frames = read_all_frames(uri)
    if isinstance(frames, VideoError):
        return frames
    if len(frames) < cfg.frames:
        return VideoError("too_short", f"{len(frames)} frames, the generator needs {cfg.frames}", uri)
    idx = np.round(np.linspace(0, len(frames) - 1, cfg.frames)).astype(int)
    return resize_frames(frames[idx], cfg.height, cfg.width)


def _pairs(table: pa.Table, r: np.ndarray, valid: np.ndarray, min_margin: float) -> tuple[pa.Table, dict]:
    a_wins = valid & (r > min_margin)
    b_wins = valid & (r < -min_margin)
    keep = np.flatnonzero(a_wins | b_wins)
    uri_a, uri_b = (
        table.column("uri_A").to_numpy(zero_copy_only=False),
        table.column("uri_B").to_numpy(zero_copy_only=False),
    )
    win = np.where(a_wins, uri_a, uri_b)[keep]
    lose = np.where(a_wins, uri_b, uri_a)[keep]
    out = pa.table(
        {
            "row_id": table.column("row_id").take(pa.array(keep)),
            "uri_w": pa.array(win.tolist(), pa.string()),
            "uri_l": pa.array(lose.tolist(), pa.string()),
            "prompt": table.column("prompt").take(pa.array(keep)),
            "r": pa.array(np.abs(r[keep]), pa.float64()),
        }
    )
    counts = {
        "rows": table.num_rows,
        "pairs": len(keep),
        "a_wins": int(a_wins.sum()),
        "b_wins": int(b_wins.sum()),
        "dropped_tie": int((valid & ~a_wins & ~b_wins).sum()),
        "dropped_unlabelled_or_error": int((~valid).sum()),
    }
    return out, counts


def pairs_from_labels(table: pa.Table, weights: dict[str, float], min_margin: float = 0.0) -> tuple[pa.Table, dict]:
    """Pairs from a loaded preference manifest (`y_<DIM>` columns of `load_manifest`)."""
    require_nonzero(weights)
    r, valid = scalarize_columns(table, weights, lambda d: f"y_{d}")
    return _pairs(table, r, valid, min_margin)


def pairs_from_margins(table: pa.Table, weights: dict[str, float], min_margin: float = 0.0) -> tuple[pa.Table, dict]:
    """Pairs from `raypipe relabel` output on a preference manifest (`margin_<DIM>` columns, `error`)."""
    require_nonzero(weights)
    r, valid = scalarize_columns(table, weights, lambda d: f"margin_{d}")
    if "error" in table.column_names:
        valid &= np.array([e is None for e in table.column("error").to_pylist()])
    return _pairs(table, r, valid, min_margin)


# --- training rows per algorithm -----------------------------------------------------------------------------
def _reward_of(table: pa.Table, side: str, weights: dict[str, float]) -> np.ndarray | None:
    """Σ_d w_d·score of each row's `side` video (relabel `score_<S>_<DIM>`, else `MOS_<S>_<DIM>`), NaN where a
    weighted score is missing; None when a weighted dimension has neither column."""

    def column_of(dim):
        return next((c for c in (f"score_{side}_{dim}", f"MOS_{side}_{dim}") if c in table.column_names), None)

    try:
        r, valid = scalarize_columns(table, weights, column_of)
    except KeyError:
        return None
    return np.where(valid, r, np.nan)


def true_captions(table: pa.Table, side: str) -> list[str] | None:
    """SynthPref videos contradict their pair's prompt on purpose (TA levels): pretraining captions each video
    with what it shows, from the gt_color/gt_shape/gt_direction columns when the manifest has them."""
    cols = [f"gt_{a}_{side}" for a in ("color", "shape", "direction")]
    if not all(c in table.column_names for c in cols):
        return None
    return [make_prompt(c, s, d) for c, s, d in zip(*(table.column(c).to_pylist() for c in cols))]


def training_rows(
    table: pa.Table, algo: str, source: str, weights: dict[str, float], min_margin: float = 0.0
) -> tuple[pa.Table, dict]:
    """The rows the workers train on, and counts of what was kept and dropped (nothing disappears silently)."""
    if algo not in ALGOS or algo == "lift":
        raise ConfigError(f"training_rows builds algo in {[a for a in ALGOS if a != 'lift']}, got {algo!r}")
    prompts = table.column("prompt").to_pylist()
    if algo == "pretrain":
        seen = {}
        for side in ("A", "B"):
            for uri, prompt in zip(table.column(f"uri_{side}").to_pylist(), true_captions(table, side) or prompts):
                seen.setdefault((uri, prompt), None)
        rows = pa.table({"uri": [k[0] for k in seen], "prompt": [k[1] for k in seen]})
        return rows, {
            "rows": table.num_rows,
            "videos": rows.num_rows,
            "captions": "true attributes (gt_*)" if true_captions(table, "A") else "pair prompts",
        }
    if algo == "rwr":
        ra, rb = _reward_of(table, "A", weights), _reward_of(table, "B", weights)
        if ra is None or rb is None:
            raise ConfigError(
                "rwr needs per-video scores: relabel output (score_A_<DIM>) or MOS_A_<DIM> columns "
                f"for every weighted dimension {sorted(weights)}"
            )
        uris = table.column("uri_A").to_pylist() + table.column("uri_B").to_pylist()
        reward = np.concatenate([ra, rb])
        keep = np.flatnonzero(np.isfinite(reward))
        rows = pa.table(
            {
                "uri": [uris[i] for i in keep],
                "prompt": [(prompts + prompts)[i] for i in keep],
                "reward": pa.array(reward[keep], pa.float64()),
            }
        )
        return rows, {"rows": table.num_rows, "videos": rows.num_rows, "dropped_no_score": int(len(reward) - len(keep))}
    build = pairs_from_labels if source == "labels" else pairs_from_margins
    if source not in ("labels", "margins"):
        raise ConfigError(f"data.source must be labels or margins, got {source!r}")
    try:
        pairs, counts = build(table, weights, min_margin)
    except (KeyError, ValueError) as e:  # weights that name no column, or all zero: the config's fault
        raise ConfigError(f"data.weights: {e.args[0] if e.args else e}") from None
    if algo == "sft":
        return pa.table({"uri": pairs.column("uri_w"), "prompt": pairs.column("prompt")}), counts
    return pairs.select(["uri_w", "uri_l", "prompt"]), counts


def with_real_pairs(rows: pa.Table, counts: dict, real: pa.Table) -> tuple[pa.Table, dict]:
    """Flow-DPO rows plus real videos for the SFT term (`train.lambda_sft`, `losses.dpo_sft_loss`): each real video
    becomes a row with itself on both sides (`uri_w` = `uri_l`; the loser side is ignored) and `is_real` true;
    the pairs get `is_real` false. `counts["real"]` says how many were added."""
    if {"uri_w", "uri_l", "prompt"} - set(rows.column_names):
        raise ValueError(f"with_real_pairs takes Flow-DPO rows (uri_w, uri_l, prompt), got {rows.column_names}")
    uris = real.column("uri").to_pylist()
    added = pa.table(
        {
            "uri_w": pa.array(uris, pa.string()),
            "uri_l": pa.array(uris, pa.string()),
            "prompt": real.column("prompt").cast(pa.string()),
            "is_real": pa.array([True] * len(uris), pa.bool_()),
        }
    )
    pairs = rows.select(["uri_w", "uri_l", "prompt"])
    pairs = pairs.append_column("is_real", pa.array([False] * pairs.num_rows, pa.bool_()))
    return pa.concat_tables([pairs.cast(added.schema), added]), {**counts, "real": len(uris)}
