"""Frame sampling and resizing: exactly SPEC §2.3.

- Count: `n = round_to_multiple(total_frames / video_fps * fps, 2)`, clamped to `[min_frames, max_frames]`
  and to the largest even count the video has; always even (Qwen2-VL's temporal patch is 2).
- Indices: `linspace(0, total_frames - 1, n)`, rounded half up.
- Size: aspect ratio kept, `min_pixels <= H*W <= max_pixels`, H and W multiples of 28 (patch 14 x merge 2).
"""

from __future__ import annotations

import math

import numpy as np

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


def num_sampled_frames(
    total_frames: int, video_fps: float, fps: float = 2.0, min_frames: int = 4, max_frames: int = 64
) -> int:
    """How many frames the model sees of a clip of `total_frames` frames at `video_fps`.

    Raises SamplingError("too_short") when the video has fewer (even) frames than `min_frames`.
    """
    if total_frames <= 0:
        raise SamplingError("empty", f"the video has {total_frames} frames")
    if not (video_fps > 0 and math.isfinite(video_fps)):
        raise SamplingError("corrupt", f"the video reports an invalid frame rate {video_fps!r}")
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
    if height <= 0 or width <= 0:
        raise SamplingError("corrupt", f"invalid frame size {height}x{width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise SamplingError("too_large", f"aspect ratio of {height}x{width} exceeds {MAX_ASPECT_RATIO}:1")
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
