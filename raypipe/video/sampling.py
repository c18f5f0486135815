"""Frame sampling and resizing: exactly SPEC §2.3.

- Count: `n = round_to_multiple(total_frames / video_fps * fps, 2)`, clamped to `[min_frames, max_frames]`
  and to the largest even count the video has; always even (Qwen2-VL's temporal patch is 2).
- Indices: `linspace(0, total_frames - 1, n)`, rounded half up.
- Size: aspect ratio kept, `min_pixels <= H*W <= max_pixels`, H and W multiples of 28 (patch 14 x merge 2).

`SamplingConfig.convention = "qwen"` selects qwen-vl-utils 0.0.8's conventions instead (`qwen_*` below), which the
released VideoReward checkpoint was trained and is scored with: Python's banker's rounding of the count and the
sides, torch's half-to-even rounding of float32 `linspace` indices, no even-count cap below the clip's length.
`plan_frames` / `plan_size` pick by convention.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from raypipe.config import SAMPLING_CONVENTIONS

if TYPE_CHECKING:
    from raypipe.config import SamplingConfig

FACTOR = 28  # Qwen2-VL: spatial patch 14 x spatial merge 2
TEMPORAL_PATCH = 2
MAX_ASPECT_RATIO = 200


class SamplingError(ValueError):
    """Raised by the pure functions below; the decoder turns it into a classified error value."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def round_to_multiple(x: float, m: int) -> int:
    """Nearest multiple of `m`, halves rounded up (5 -> 6 for m=2), never Python's banker's rounding."""
    return _round_half_up(x / m) * m


def _check_clip(total_frames: int, video_fps: float) -> None:
    """What a clip's header must say before any count is planned (both conventions)."""
    if total_frames <= 0:
        raise SamplingError("empty", f"the video has {total_frames} frames")
    if not (video_fps > 0 and math.isfinite(video_fps)):
        raise SamplingError("corrupt", f"the video reports an invalid frame rate {video_fps!r}")


def _check_frame_size(height: int, width: int) -> None:
    """What a frame size must be before any resize is planned (both conventions)."""
    if height <= 0 or width <= 0:
        raise SamplingError("corrupt", f"invalid frame size {height}x{width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise SamplingError("too_large", f"aspect ratio of {height}x{width} exceeds {MAX_ASPECT_RATIO}:1")


def num_sampled_frames(
    total_frames: int, video_fps: float, fps: float = 2.0, min_frames: int = 4, max_frames: int = 64
) -> int:
    """How many frames the model sees of a clip of `total_frames` frames at `video_fps`.

    Raises SamplingError("too_short") when the video has fewer (even) frames than `min_frames`.
    """
    _check_clip(total_frames, video_fps)
    if fps <= 0 or min_frames < TEMPORAL_PATCH or max_frames < min_frames:
        raise ValueError(f"bad sampling settings fps={fps} min_frames={min_frames} max_frames={max_frames}")
    lo = TEMPORAL_PATCH * math.ceil(min_frames / TEMPORAL_PATCH)
    hi = TEMPORAL_PATCH * (max_frames // TEMPORAL_PATCH)
    available = TEMPORAL_PATCH * (total_frames // TEMPORAL_PATCH)
    if available < lo:
        raise SamplingError(
            "too_short", f"the video has {total_frames} frames; at least {lo} are needed (min_frames={min_frames})"
        )
    n = round_to_multiple(total_frames / video_fps * fps, TEMPORAL_PATCH)
    return min(max(n, lo), hi, available)


def sample_frame_indices(
    total_frames: int, video_fps: float, fps: float = 2.0, min_frames: int = 4, max_frames: int = 64
) -> list[int]:
    """The frame indices to decode: `linspace(0, total_frames - 1, n)` rounded half up."""
    n = num_sampled_frames(total_frames, video_fps, fps, min_frames, max_frames)
    return [_round_half_up(x) for x in np.linspace(0, total_frames - 1, n)]


def resized_size(
    height: int, width: int, min_pixels: int = 56 * 56, max_pixels: int = 448 * 448, factor: int = FACTOR
) -> tuple[int, int]:
    """(H, W) after an aspect-preserving resize into the pixel budget, both multiples of `factor`.

    Sides are first rounded to the nearest multiple of `factor` (at least `factor`); if the area then
    exceeds `max_pixels` both sides are scaled down by sqrt(area / max_pixels) and floored, if it is below
    `min_pixels` they are scaled up and ceiled. Floors never go below one `factor`.
    """
    _check_frame_size(height, width)
    if max_pixels < factor * factor or min_pixels > max_pixels:
        raise ValueError(f"bad pixel budget min_pixels={min_pixels} max_pixels={max_pixels}")
    h = max(factor, round_to_multiple(height, factor))
    w = max(factor, round_to_multiple(width, factor))
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


# --- qwen-vl-utils 0.0.8 (smart_nframes, torch.linspace(...).round(), smart_resize) -----------------------------
QWEN_MAX_FRAMES = 768  # qwen-vl-utils FPS_MAX_FRAMES
QWEN_VIDEO_MIN_PIXELS = 128 * 28 * 28  # qwen-vl-utils VIDEO_MIN_PIXELS (small videos are upscaled to it)


def qwen_num_frames(
    total_frames: int, video_fps: float, fps: float = 2.0, min_frames: int = 4, max_frames: int = QWEN_MAX_FRAMES
) -> int:
    """qwen-vl-utils 0.0.8 `smart_nframes` for `{"fps": fps}` with `max_frames` as its FPS_MAX_FRAMES cap:

    `lo = ceil_by_factor(min_frames, 2)`, `hi = floor_by_factor(min(max_frames, total_frames), 2)`,
    `n = round_by_factor(min(max(total_frames / video_fps * fps, lo), hi), 2)` with Python's round (half to
    even: 20 frames at 8 fps, fps 2 -> 5 -> 4 frames). `hi` wins over `lo`, so a 3-frame clip gives 2 frames.
    Raises SamplingError("too_short") unless `2 <= n <= total_frames` (as qwen raises its ValueError).
    """
    _check_clip(total_frames, video_fps)
    if not fps > 0 or max_frames < TEMPORAL_PATCH:
        raise ValueError(f"bad sampling settings fps={fps} max_frames={max_frames}")
    lo = math.ceil(min_frames / TEMPORAL_PATCH) * TEMPORAL_PATCH
    hi = math.floor(min(max_frames, total_frames) / TEMPORAL_PATCH) * TEMPORAL_PATCH
    n = min(max(total_frames / video_fps * fps, lo), hi)
    n = round(n / TEMPORAL_PATCH) * TEMPORAL_PATCH
    if not TEMPORAL_PATCH <= n <= total_frames:
        raise SamplingError(
            "too_short", f"the video has {total_frames} frames; {n} sampled frames is outside [2, {total_frames}]"
        )
    return int(n)


def qwen_frame_indices(
    total_frames: int, video_fps: float, fps: float = 2.0, min_frames: int = 4, max_frames: int = QWEN_MAX_FRAMES
) -> list[int]:
    """qwen-vl-utils 0.0.8's indices: `torch.linspace(0, total_frames - 1, n).round().long()` (float32, half to
    even), `n = qwen_num_frames(...)`."""
    import torch

    n = qwen_num_frames(total_frames, video_fps, fps, min_frames, max_frames)
    return torch.linspace(0, total_frames - 1, n).round().long().tolist()


def qwen_resized_size(
    height: int, width: int, min_pixels: int = QWEN_VIDEO_MIN_PIXELS, max_pixels: int = 768 * 28 * 28
) -> tuple[int, int]:
    """qwen-vl-utils 0.0.8 `smart_resize(height, width, 28, min_pixels, max_pixels)`.

    Sides rounded to a multiple of 28 with Python's round (half to even), at least 28; above `max_pixels` both
    scaled by sqrt(area / max_pixels) and floored, below `min_pixels` scaled up and ceiled (no floor of one
    factor, no check that min_pixels <= max_pixels: qwen's order). Raises SamplingError("too_large") for an aspect
    ratio above 200 (qwen's ValueError) and where a side floors to 0 (qwen returns it and its resize then fails).
    """
    factor = FACTOR
    _check_frame_size(height, width)
    if max_pixels < factor * factor:
        raise ValueError(f"bad pixel budget max_pixels={max_pixels} (below one {factor}x{factor} patch)")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = math.floor(height / beta / factor) * factor
        w = math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    if h == 0 or w == 0:
        raise SamplingError(
            "too_large", f"{height}x{width} in max_pixels={max_pixels} leaves a side below {factor} pixels"
        )
    return h, w


# --- dispatch by SamplingConfig.convention ----------------------------------------------------------------------
def check_convention(convention: str) -> str:
    if convention not in SAMPLING_CONVENTIONS:
        raise ValueError(f"unknown sampling convention {convention!r}; one of {list(SAMPLING_CONVENTIONS)}")
    return convention


def plan_frames(total_frames: int, video_fps: float, sampling: SamplingConfig) -> list[int]:
    """The frame indices `sampling` asks for, by its convention (`all_frames`: every frame, either convention)."""
    if sampling.all_frames:
        if total_frames < sampling.min_frames:
            raise SamplingError("too_short", f"{total_frames} frames, fewer than min_frames={sampling.min_frames}")
        return list(range(min(total_frames, sampling.max_frames)))
    pick = qwen_frame_indices if check_convention(sampling.convention) == "qwen" else sample_frame_indices
    return pick(total_frames, video_fps, sampling.fps, sampling.min_frames, sampling.max_frames)


def plan_size(height: int, width: int, sampling: SamplingConfig) -> tuple[int, int]:
    """(H, W) the frames are resized to, by `sampling`'s convention."""
    size = qwen_resized_size if check_convention(sampling.convention) == "qwen" else resized_size
    return size(height, width, sampling.min_pixels, sampling.max_pixels)
