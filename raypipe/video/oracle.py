"""The SynthPref oracle: a programmatic judge of VQ, MQ and TA from a video's pixels (DESIGN.md).

    scores = judge(frames, "a red circle moving left")   # {"VQ": .., "MQ": .., "TA": .., "wrong_attributes": ..}
    scores = judge_video("clip.mp4", prompt)              # or {"error": kind, "message": ...}

It plays the human annotator, so it reads only pixels and the prompt, never the generator's latents. It works on
any size and frame count (>= 2); pixel quantities are measured in units of min(H, W) / 56 so that a 16x16 or
32x32 sample is judged on the same scale as the 56x56 reference. A video with no object gets the lowest scores.
"""
from __future__ import annotations

import re

import numpy as np
from scipy import ndimage

from raypipe.video.decode import VideoError, read_all_frames
from raypipe.video.synth import (COLOR_RGB, COLORS, DIRECTIONS, MAX_BLUR, MAX_FROZEN, MAX_JITTER, MAX_NOISE,
                                 REFERENCE_SIZE, SHAPES)

_DIRECTION_WORDS = {"left": "left", "leftward": "left", "leftwards": "left", "right": "right",
                    "rightward": "right", "rightwards": "right", "up": "up", "upward": "up", "upwards": "up",
                    "down": "down", "downward": "down", "downwards": "down"}
_SHAPE_WORDS = {"circle": "circle", "circles": "circle", "disc": "circle", "disk": "circle", "ball": "circle",
                "square": "square", "squares": "square", "box": "square",
                "triangle": "triangle", "triangles": "triangle"}
_COLOR_WORDS = {c: c for c in COLORS} | {"violet": "purple", "grey": "white", "gray": "white"}


def parse_prompt(prompt: str) -> tuple[str | None, str | None, str | None]:
    """(color, shape, direction) named in the prompt; None for a part it does not name."""
    words = re.findall(r"[a-z]+", str(prompt).lower())
    found = {}
    for key, vocab in (("color", _COLOR_WORDS), ("shape", _SHAPE_WORDS), ("direction", _DIRECTION_WORDS)):
        found[key] = next((vocab[w] for w in words if w in vocab), None)
    return found["color"], found["shape"], found["direction"]


def _foreground(video: np.ndarray, bg: np.ndarray, scale: float) -> np.ndarray:
    """[T, H, W] colour distance from the background, smoothed in space so noise does not fragment the object."""
    dist = np.linalg.norm(video - bg, axis=-1)
    return ndimage.gaussian_filter(dist, sigma=(0, scale, scale), mode="nearest")


def _object_masks(fg: np.ndarray) -> tuple[np.ndarray, float]:
    """Per frame, the largest connected region above half the object's contrast over the background floor;
    the threshold used. All-false where nothing stands out of the noise."""
    floor = float(np.median(fg))
    spread = 1.4826 * float(np.median(np.abs(fg - floor))) + 1e-6
    peak = float(np.percentile(fg, 99.9))
    thr = floor + 0.5 * (peak - floor)
    masks = np.zeros(fg.shape, bool)
    if peak - floor < max(6 * spread, 0.05):  # no object: a blank, black or pure-noise video
        return masks, thr
    for t in range(fg.shape[0]):
        labels, n = ndimage.label(fg[t] > thr)
        if n:
            sizes = ndimage.sum_labels(np.ones_like(fg[t]), labels, index=np.arange(1, n + 1))
            masks[t] = labels == 1 + int(np.argmax(sizes))
    return masks, thr


def _centroids(fg: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """[T, 2] (x, y) contrast-weighted centre of each frame's object; NaN where a frame has none."""
    t, h, w = fg.shape
    weights = np.where(masks, fg, 0.0)
    total = weights.sum(axis=(1, 2))
    xs, ys = np.arange(w), np.arange(h)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (weights.sum(axis=1) * xs).sum(axis=1) / total
        cy = (weights.sum(axis=2) * ys).sum(axis=1) / total
    out = np.stack([cx, cy], axis=1)
    out[total <= 0] = np.nan
    return out


def _aligned_mean(dist: np.ndarray, centres: np.ndarray, half: int) -> np.ndarray | None:
    """Mean of (2*half+1)^2 crops of `dist` centred on each frame's object: the object's appearance with the
    motion and most of the noise removed."""
    t, h, w = dist.shape
    pad = np.pad(dist, ((0, 0), (half, half), (half, half)), mode="edge")
    crops = []
    for k in range(t):
        if np.isfinite(centres[k]).all():
            x, y = int(round(centres[k, 0])), int(round(centres[k, 1]))
            x, y = min(max(x, 0), w - 1), min(max(y, 0), h - 1)
            crops.append(pad[k, y:y + 2 * half + 1, x:x + 2 * half + 1])
    return np.mean(crops, axis=0) if crops else None
