"""THE decode stage: rows of a table in small blocks -> Ray Data CPU tasks that decode their videos.

    ds = decode_stage(table, decode_pairs_block, {"sampling": sampling}, rows_per_block=4)

One task decodes one whole block; decoding spreads over every node's CPUs and streams (Ray Data's backpressure
bounds what is in flight), never materialising the set. A bad video never raises: its row keeps an `error` kind
(and for pairs/videos an `error_message`) and empty frames, so every input row comes out exactly once. We do not
use `ray.data.read_videos`: it yields one row per frame and decodes every frame.

The three block functions are the three views of a video our jobs need: both sides of a preference pair sampled
for the reward model (`decode_pairs_block`), one video per row for scoring (`decode_videos_block`), and
fixed-shape generator clips (`decode_clips_block`).
"""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa

from raypipe.config import DataConfig, SamplingConfig
from raypipe.data.manifest import Manifest
from raypipe.data.tables import SIDES, replace_column
from raypipe.distributed.arrow import frames_column, tensor_column
from raypipe.video.decode import VideoClip, VideoError, decode_video

_NO_FRAMES = np.zeros((0, 0, 0, 3), np.uint8)


def blocks(table: pa.Table, rows_per_block: int) -> list[pa.Table]:
    """`table` cut into consecutive slices of `rows_per_block` rows (the unit of parallel decoding)."""
    step = max(1, int(rows_per_block))
    return [table.slice(start, step) for start in range(0, table.num_rows, step)] or [table]


def decode_stage(
    table: pa.Table, block_fn, fn_kwargs: dict, rows_per_block: int, num_cpus: float, max_retries: int | None = None
):
    """Lazy Ray Dataset: `block_fn(block, **fn_kwargs)` on every block of `table`, one CPU task per block.

    `max_retries` (Ray's task retries: a node can die mid-decode) also keeps Ray Data from fusing this stage
    into a following actor stage (it fuses a task map into an actor map whose remote args match); fused, every
    actor would decode and then work, in turn, with no overlap."""
    import ray.data

    options = {} if max_retries is None else {"max_retries": max_retries}
    with warnings.catch_warnings():
        # Ray 2.60 deprecates extra remote args but has no named parameter for max_retries yet (pinned in
        # constraints.txt; revisit when Ray adds one): the warning says nothing a user can act on.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ray.data.from_arrow(blocks(table, rows_per_block)).map_batches(
            block_fn,
            fn_kwargs=fn_kwargs,
            batch_format="pyarrow",
            batch_size=None,
            zero_copy_batch=True,
            num_cpus=num_cpus,
            **options,
        )


def decode_pairs_block(batch: pa.Table, sampling: SamplingConfig, sides=SIDES) -> pa.Table:
    """Decode both videos of every row of `batch` (a pyarrow table with `uri_A`, `uri_B`); the columns are
    those of `raypipe.data.tables`."""
    out = {}
    errors: list[str | None] = [None] * batch.num_rows
    messages: list[str | None] = [None] * batch.num_rows
    for side in sides:
        frames, indices, totals, fpss, heights, widths = [], [], [], [], [], []
        for i, uri in enumerate(batch.column(f"uri_{side}").to_pylist()):
            result = decode_video(uri, sampling)
            if isinstance(result, VideoClip):
                info = result.info
                frames.append(result.frames)
                indices.append(info.indices)
                totals.append(info.total_frames)
                fpss.append(info.fps)
                heights.append(info.height)
                widths.append(info.width)
            else:
                frames.append(_NO_FRAMES)
                for col in (indices, totals, fpss, heights, widths):
                    col.append(None)
                if errors[i] is None:
                    errors[i] = result.kind
                text = f"{side}: {result.kind}: {result.message}"
                messages[i] = text if messages[i] is None else messages[i] + " | " + text
        out[f"frames_{side}"] = frames_column(frames)
        out[f"indices_{side}"] = pa.array(indices, pa.list_(pa.int32()))
        out[f"total_frames_{side}"] = pa.array(totals, pa.int64())
        out[f"video_fps_{side}"] = pa.array(fpss, pa.float64())
        out[f"height_{side}"] = pa.array(heights, pa.int32())
        out[f"width_{side}"] = pa.array(widths, pa.int32())
    out["error"] = pa.array(errors, pa.string())
    out["error_message"] = pa.array(messages, pa.string())
    for name, column in out.items():
        batch = replace_column(batch, name, column)
    return batch


def decode_videos_block(batch: pa.Table, sampling: SamplingConfig) -> pa.Table:
    """Decode the `uri` of every row -> `frames` (uint8 [T,H,W,3], empty on error), `error`, `error_message`.
    Other columns pass through."""
    frames, errors, messages = [], [], []
    for uri in batch.column("uri").to_pylist():
        result = decode_video(uri, sampling)
        if isinstance(result, VideoClip):
            frames.append(result.frames)
            errors.append(None)
            messages.append(None)
        else:
            frames.append(_NO_FRAMES)
            errors.append(result.kind)
            messages.append(f"{result.kind}: {result.message}")
    batch = replace_column(batch, "frames", frames_column(frames))
    batch = replace_column(batch, "error", pa.array(errors, pa.string()))
    return replace_column(batch, "error_message", pa.array(messages, pa.string()))


def decode_clips_block(batch: pa.Table, clip, columns: dict[str, str], image_from: str | None = None) -> pa.Table:
    """Each `uri` column -> a fixed-shape generator clip column (`columns` maps uri column -> frames column);
    `error` holds the first failure's kind (the worker skips and counts such rows). `image_from` (a frames column):
    its first frames also become the `image` column (uint8 [H, W, 3]), image-to-video's conditioning image."""
    from raypipe.flow.pairs import generator_clip

    errors: list[str | None] = [None] * batch.num_rows
    empty = np.zeros((clip.frames, clip.height, clip.width, 3), np.uint8)
    for uri_col, frames_col in columns.items():
        frames = []
        for i, uri in enumerate(batch.column(uri_col).to_pylist()):
            result = generator_clip(uri, clip)
            if isinstance(result, VideoError):
                errors[i] = errors[i] or result.kind
                frames.append(empty)
            else:
                frames.append(result)
        batch = batch.append_column(frames_col, frames_column(frames))
        if frames_col == image_from:
            batch = batch.append_column("image", tensor_column(np.stack([f[0] for f in frames])))
    return batch.append_column("error", pa.array(errors, pa.string()))


def manifest_dataset(manifest: Manifest, rows_per_block: int = 4):
    """The manifest as a Ray Dataset of small blocks (a block is the unit of parallel decoding)."""
    import ray.data

    return ray.data.from_arrow(blocks(manifest.table, rows_per_block))


def pair_dataset(manifest: Manifest, cfg: DataConfig | None = None):
    """Lazy Ray Dataset of decoded pairs: every manifest column + the `raypipe.data.tables` columns."""
    cfg = cfg or DataConfig()
    if manifest.kind != "pairs":
        raise ValueError(f"pair_dataset needs a preference manifest, {manifest.source} is {manifest.kind}")
    return decode_stage(
        manifest.table, decode_pairs_block, {"sampling": cfg.sampling}, cfg.rows_per_block, cfg.decode_cpus
    )
