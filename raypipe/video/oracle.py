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

# The generator's vocabulary and geometry: the oracle's colour palette and shape templates match it by construction.
from raypipe.video.synth import COLOR_RGB, COLORS, MAX_FROZEN, MAX_JITTER, MAX_NOISE, REFERENCE_SIZE, SHAPES, shape_sdf

_DIRECTION_WORDS = {
    "left": "left",
    "leftward": "left",
    "leftwards": "left",
    "right": "right",
    "rightward": "right",
    "rightwards": "right",
    "up": "up",
    "upward": "up",
    "upwards": "up",
    "down": "down",
    "downward": "down",
    "downwards": "down",
}
_SHAPE_WORDS = {
    "circle": "circle",
    "circles": "circle",
    "disc": "circle",
    "disk": "circle",
    "ball": "circle",
    "square": "square",
    "squares": "square",
    "box": "square",
    "triangle": "triangle",
    "triangles": "triangle",
}
_COLOR_WORDS = {c: c for c in COLORS} | {"violet": "purple"}


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


def _object_masks(fg: np.ndarray) -> np.ndarray:
    """[T, H, W] bool: per frame, the largest connected region above half the object's contrast over the
    background floor. All false where nothing stands out of the noise."""
    floor = float(np.median(fg))
    spread = 1.4826 * float(np.median(np.abs(fg - floor))) + 1e-6
    peak = float(np.percentile(fg, 99.9))
    masks = np.zeros(fg.shape, bool)
    if peak - floor < max(6 * spread, 0.05):  # no object: a blank, black or pure-noise video
        return masks
    for t in range(fg.shape[0]):
        labels, n = ndimage.label(fg[t] > floor + 0.5 * (peak - floor))
        if n:
            sizes = ndimage.sum_labels(np.ones_like(fg[t]), labels, index=np.arange(1, n + 1))
            masks[t] = labels == 1 + int(np.argmax(sizes))
    return masks


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
            crops.append(pad[k, y : y + 2 * half + 1, x : x + 2 * half + 1])
    return np.mean(crops, axis=0) if crops else None


# Instrument constants, measured on SynthPref videos after H.264 (crf 18) so that the scores read as levels.
NOISE_GAIN = 0.40  # robust std of the grey high-pass residual per unit of pixel-noise sigma
SHARP_WIDTH, BLUR_WIDTH = 2.0, 4.0  # edge width sqrt(2 pi) sigma_eff (px) at vq = 1 and at vq = 0
NOISE_WEIGHT = 0.75  # of VQ degradation; the rest is blur
FROZEN_WEIGHT = 0.25  # of MQ degradation; the rest is jitter
MIN_SPEED = 0.3  # px per frame (reference scale) below which an object is not moving anywhere


def _noise_level(video: np.ndarray, masks: np.ndarray, scale: float) -> float:
    """Pixel-noise sigma estimated from the background: robust std of the grey residual after smoothing."""
    grey = video.mean(axis=-1)
    residual = grey - ndimage.gaussian_filter(grey, sigma=(0, 1, 1), mode="nearest")
    grow = max(int(round(3 * scale)), 1)
    background = ~ndimage.binary_dilation(masks, structure=np.ones((1, 3, 3), bool), iterations=grow)
    r = residual[background] if background.any() else residual.ravel()
    return 1.4826 * float(np.median(np.abs(r - np.median(r)))) / NOISE_GAIN


def _edge_width(p: np.ndarray) -> float:
    """sqrt(2 pi) * edge sigma (px) of the normalised aligned object: its unit contrast over the steepest
    (95th percentile) gradient, a blur measure that ignores the object's size."""
    gy, gx = np.gradient(p)
    g = np.hypot(gx, gy)[p > 0.1]
    return 1.0 / max(float(np.percentile(g, 95)), 1e-6) if g.size else np.inf


def _frozen_steps(video: np.ndarray, centres: np.ndarray, scale: float) -> np.ndarray:
    """[T-1] bool: frame t repeats frame t-1. A repeat is (nearly) free for the encoder, so its difference is far
    below the clip's typical one; an object whose centre does not move at all counts too (zero displacement)."""
    if len(video) < 2:
        return np.zeros(0, bool)
    diff = np.abs(np.diff(video, axis=0)).mean(axis=(1, 2, 3))
    repeat = diff < 0.2 * np.median(diff) + 1e-4
    with np.errstate(invalid="ignore"):
        still = np.linalg.norm(np.diff(centres, axis=0), axis=1) < 0.1 * scale
    return repeat | still


def _jitter(centres: np.ndarray, frozen: np.ndarray) -> float:
    """RMS distance (px) of the object's centre from the best constant-velocity path, over the frames that show
    a new position; corrected for the two fitted parameters per axis so it estimates the jitter amplitude."""
    keep = np.isfinite(centres).all(axis=1)
    keep[1:] &= ~frozen
    t = np.flatnonzero(keep).astype(float)
    if t.size < 3:
        return 0.0
    design = np.stack([np.ones_like(t), t], axis=1)
    coef, *_ = np.linalg.lstsq(design, centres[keep], rcond=None)
    residual = centres[keep] - design @ coef
    return float(np.sqrt((residual**2).sum(axis=1).mean() * t.size / (t.size - 2)))


def _direction(centres: np.ndarray, scale: float) -> str | None:
    """Dominant axis and sign of the fitted velocity; None for an object that does not travel."""
    ok = np.isfinite(centres).all(axis=1)
    t = np.flatnonzero(ok).astype(float)
    if t.size < 2:
        return None
    design = np.stack([np.ones_like(t), t], axis=1)
    coef, *_ = np.linalg.lstsq(design, centres[ok], rcond=None)
    vx, vy = coef[1]
    if np.hypot(vx, vy) < MIN_SPEED * scale:
        return None
    if abs(vx) >= abs(vy):
        return "right" if vx > 0 else "left"
    return "down" if vy > 0 else "up"


def _color(video: np.ndarray, bg: np.ndarray, fg: np.ndarray, masks: np.ndarray) -> str:
    """Palette colour closest to the mean of the object's core pixels, allowing the core to be dimmed towards
    the background (blur spreads the object's colour into it)."""
    floor, peak = float(np.median(fg)), float(np.percentile(fg, 99.9))
    core = masks & (fg > floor + 0.75 * (peak - floor))
    mean = video[core if core.sum() >= 3 else masks].mean(axis=0)
    dists = []
    for name in COLORS:
        u = np.asarray(COLOR_RGB[name]) - bg
        a = np.clip(np.dot(mean - bg, u) / max(np.dot(u, u), 1e-9), 0.3, 1.0)
        dists.append(np.linalg.norm(mean - (bg + a * u)))
    return COLORS[int(np.argmin(dists))]


# Area of each shape in units of r^2 and its centroid's offset below the centre of its 2r x 2r box (synth.py).
_SHAPE_AREA = {"circle": np.pi, "square": 4.0, "triangle": 2.0}
_SHAPE_CENTROID = {"circle": 0.0, "square": 0.0, "triangle": 1.0 / 3.0}


def _shape(p: np.ndarray) -> tuple[str, float]:
    """Best-fitting template (least squares over a few blur widths) for the normalised aligned object `p`, each
    shape sized to the object's area and placed on its centroid; the fitted radius (px)."""
    h, w = p.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(float)
    weight = np.clip(p, 0.0, None)
    total = max(float(weight.sum()), 1e-9)
    cx, cy = float((weight * xs).sum()) / total, float((weight * ys).sum()) / total
    area = float(np.clip(p, 0.0, 1.0).sum())
    best, best_err, best_r = SHAPES[0], np.inf, 0.0
    for name in SHAPES:
        r = np.sqrt(area / _SHAPE_AREA[name])
        template = np.clip(0.5 - shape_sdf(name, xs - cx, ys - (cy - _SHAPE_CENTROID[name] * r), r), 0.0, 1.0)
        for sigma in (0.4, 0.8, 1.2, 1.6, 2.0):
            err = float(((ndimage.gaussian_filter(template, sigma) - p) ** 2).sum())
            if err < best_err:
                best, best_err, best_r = name, err, r
    return best, best_r


def _normalised_object(crop: np.ndarray) -> np.ndarray:
    """The aligned crop mapped so that background = 0 and the object's body = 1."""
    border = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]])
    base, peak = float(np.median(border)), float(np.percentile(crop, 97))
    return (crop - base) / max(peak - base, 1e-6)


def _no_object(want: tuple, frames: int) -> dict:
    """Lowest scores: nothing to judge is as bad as it gets, and every attribute the prompt names is missed."""
    wrong = sum(w is not None for w in want)
    return {
        "VQ": 0.0,
        "MQ": 0.0,
        "TA": float(3 - wrong),
        "wrong_attributes": wrong,
        "color": None,
        "shape": None,
        "direction": None,
        "object_found": False,
        "frames": frames,
        "noise": None,
        "edge_width": None,
        "jitter": None,
        "frozen_frames": None,
        "radius": None,
    }


def judge(frames: np.ndarray, prompt: str) -> dict:
    """Scores (higher is better) of a uint8 video [T, H, W, 3] (or [T, H, W] grey) for a SynthPref-style prompt.

        VQ = 1 - (0.75 * min(noise / 0.25, 1) + 0.25 * blur),  blur = edge width mapped from 2 px (sharp) to 4 px
             (sigma 1.5) onto [0, 1];
        MQ = max(0, 1 - (0.75 * jitter / 6 px + 0.25 * broken steps / (3 per 15 steps))),  broken = frozen or
             object missing (not capped: a clip frozen throughout scores 0);
        TA = 3 - wrong_attributes,  each attribute the prompt names that the video contradicts (or that cannot be
             seen, e.g. no motion) counts as wrong; attributes the prompt does not name cannot be wrong.
    At the reference difficulty VQ and MQ read as estimates of the generator's vq and mq levels. Also returned:
    what was seen (`color`, `shape`, `direction`, `radius` in reference px) and the raw measurements.
    """
    video = _frames_array(frames)
    want = parse_prompt(prompt)
    t, h, w = video.shape[:3]
    if video.size == 0 or min(h, w) < 4:
        return _no_object(want, t)
    video = _rgb_float(video)
    scale = min(h, w) / REFERENCE_SIZE
    bg = np.median(video.reshape(-1, 3), axis=0)
    fg = _foreground(video, bg, scale)
    masks = _object_masks(fg)
    if not masks.any():
        return _no_object(want, t)
    centres = _centroids(fg, masks)
    p = _aligned_object(video, bg, masks, centres)
    vq, noise, width = _visual_quality(video, masks, p, scale)
    mq, jitter, broken = _motion_quality(video, centres, scale)
    shape, radius = _shape(p)
    seen = (_color(video, bg, fg, masks), shape, _direction(centres, scale))
    wrong = sum(w_ is not None and s != w_ for s, w_ in zip(seen, want))
    return {
        "VQ": float(vq),
        "MQ": float(mq),
        "TA": float(3 - wrong),
        "wrong_attributes": int(wrong),
        "color": seen[0],
        "shape": seen[1],
        "direction": seen[2],
        "object_found": True,
        "frames": t,
        "noise": float(noise),
        "edge_width": float(width),
        "jitter": float(jitter),
        "frozen_frames": int(broken.sum()),
        "radius": float(radius / scale),
    }


def _frames_array(frames) -> np.ndarray:
    """`frames` as a [T, H, W, C] array (a grey [T, H, W] video gets a channel axis); ValueError for other shapes."""
    video = np.asarray(frames)
    if video.ndim == 3:
        video = video[..., None]
    if video.ndim != 4:
        raise ValueError(f"judge wants frames [T, H, W, 3], got shape {video.shape}")
    return video


def _rgb_float(video: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] float32: grey repeated to three channels, extra channels dropped, uint8 scaled to [0, 1]."""
    video = np.repeat(video, 3, axis=-1) if video.shape[-1] == 1 else video[..., :3]
    return video.astype(np.float32) / (255.0 if video.dtype == np.uint8 else 1.0)


def _aligned_object(video: np.ndarray, bg: np.ndarray, masks: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The normalised aligned object: the mean of crops centred on the object, sized from its largest mask."""
    # The crop must hold the object with a margin whatever its size (a grown blob is something to see, not miss).
    radius_px = np.sqrt(masks.sum(axis=(1, 2)).max() / np.pi)
    half = max(int(np.ceil(2 * radius_px + 3)), 4)
    return _normalised_object(_aligned_mean(np.linalg.norm(video - bg, axis=-1), centres, half))


def _visual_quality(video: np.ndarray, masks: np.ndarray, p: np.ndarray, scale: float) -> tuple[float, float, float]:
    """(VQ, noise sigma, edge width in reference px) from the background noise and the aligned object `p`."""
    noise = _noise_level(video, masks, scale)
    width = _edge_width(p) / scale
    d_noise = min(noise / MAX_NOISE, 1.0)
    d_blur = float(np.clip((width - SHARP_WIDTH) / (BLUR_WIDTH - SHARP_WIDTH), 0.0, 1.0))
    vq = 1.0 - (NOISE_WEIGHT * d_noise + (1.0 - NOISE_WEIGHT) * d_blur)
    return vq, noise, width


def _motion_quality(video: np.ndarray, centres: np.ndarray, scale: float) -> tuple[float, float, np.ndarray]:
    """(MQ, jitter in reference px, [T-1] bool broken steps) from the object's centres and repeated frames."""
    t = len(video)
    # A frame without an object breaks the motion as a frozen one does.
    broken = _frozen_steps(video, centres, scale) | ~np.isfinite(centres[1:]).all(axis=1)
    jitter = _jitter(centres, broken) / scale
    # Not capped: a clip frozen throughout must score as low as one that shakes the most.
    d_frozen = broken.sum() / (MAX_FROZEN * (t - 1) / 15.0) if t > 1 else np.inf
    mq = max(1.0 - ((1.0 - FROZEN_WEIGHT) * jitter / MAX_JITTER + FROZEN_WEIGHT * d_frozen), 0.0)
    return mq, jitter, broken


def judge_video(uri: str, prompt: str, filesystem=None) -> dict:
    """`judge` on every frame of a video file; {"error": kind, "message": ...} if it cannot be decoded."""
    frames = read_all_frames(uri, filesystem)
    if isinstance(frames, VideoError):
        return {"error": frames.kind, "message": frames.message}
    return judge(frames, prompt)
