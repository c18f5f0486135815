"""SynthPref: small real mp4 preference pairs with known ground truth per dimension (DESIGN.md).

    table = make_synthpref("/tmp/synth", SynthConfig(pairs=64, seed=1))   # videos/ + manifest.parquet
    frames = render_video("red", "circle", "left", vq=0.7, mq=0.4, rng=np.random.default_rng(0))

Every pair draws from its own generator `default_rng([seed, i, stream])`, so pair i is the same whatever the
number of pairs, and labels (`sample_pair`) can be drawn without rendering anything.
Reference difficulty (the defaults here) is fixed by DESIGN.md; pixel quantities scale with min(H, W) / 56.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.ndimage import gaussian_filter

from raypipe.config import SynthConfig
from raypipe.video.encode import write_mp4

COLORS = ("red", "green", "blue", "yellow", "white", "purple")
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
DIMENSIONS = ("VQ", "MQ", "TA")
ATTRIBUTES = ("color", "shape", "direction")

# RGB on [0, 1]; far apart so that noise, blur and 4:2:0 chroma cannot confuse them.
COLOR_RGB = {
    "red": (0.95, 0.15, 0.15),
    "green": (0.15, 0.85, 0.20),
    "blue": (0.20, 0.35, 1.00),
    "yellow": (0.95, 0.90, 0.15),
    "white": (0.95, 0.95, 0.95),
    "purple": (0.65, 0.20, 0.90),
}
BACKGROUND_RGB = (0.10, 0.10, 0.10)
# Image coordinates: x to the right, y downwards.
DIRECTION_VECTORS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}

# Reference difficulty (DESIGN.md), in pixels of a 56x56 frame.
REFERENCE_SIZE = 56
RADIUS = 7.0
SPEED = 1.5  # px per source frame
MAX_BLUR = 1.5  # Gaussian sigma at vq = 0
MAX_NOISE = 0.25  # pixel noise sigma at vq = 0, on [0, 1] pixels
MAX_JITTER = 6.0  # px at mq = 0
MAX_FROZEN = 3  # frozen frames at mq = 0
TA_WRONG_PROBS = (0.4, 0.3, 0.2, 0.1)  # P(ta = 0, 1, 2, 3)
LABELS = ("A", "B", "same")


def make_prompt(color: str, shape: str, direction: str) -> str:
    return f"a {color} {shape} moving {direction}"


def parse_size(size: str) -> tuple[int, int]:
    """ "HxW" -> (H, W)."""
    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must be 'HxW', got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


@dataclass
class VideoSpec:
    """Latent levels of one video and the attributes it actually shows."""

    vq: float
    mq: float
    ta: int  # number of attributes that contradict the prompt
    color: str
    shape: str
    direction: str


@dataclass
class PairSpec:
    """One preference pair before rendering: shared prompt, two videos, labels per dimension."""

    prompt: str
    prompt_attrs: tuple[str, str, str]
    a: VideoSpec
    b: VideoSpec
    labels: dict[str, str] = field(default_factory=dict)


def wrong_attributes(rng: np.random.Generator, prompt_attrs: tuple[str, str, str], ta: int) -> tuple[str, str, str]:
    """The rendered (color, shape, direction): `ta` of the prompt's attributes, chosen at random, replaced by a
    different value of the same kind."""
    attrs = list(prompt_attrs)
    for k in rng.choice(3, size=ta, replace=False):
        vocab = (COLORS, SHAPES, DIRECTIONS)[k]
        others = [v for v in vocab if v != attrs[k]]
        attrs[k] = others[rng.integers(len(others))]
    return attrs[0], attrs[1], attrs[2]


def sample_video_spec(rng: np.random.Generator, prompt_attrs: tuple[str, str, str], ta: int | None = None) -> VideoSpec:
    """Levels vq, mq ~ U[0, 1], ta ~ TA_WRONG_PROBS (unless given), and the attributes rendered."""
    if ta is None:
        ta = int(rng.choice(4, p=TA_WRONG_PROBS))
    vq, mq = float(rng.random()), float(rng.random())
    color, shape, direction = wrong_attributes(rng, prompt_attrs, ta)
    return VideoSpec(vq, mq, ta, color, shape, direction)


def sample_ta_pair(rng: np.random.Generator, tie_share: float | None = None) -> tuple[int, int]:
    """(ta_A, ta_B). None: independent draws (ties sum p^2 = 30%). Otherwise a tie with probability
    `tie_share` (value ~ p^2), else a draw from p_a p_b restricted to a != b; both are symmetric in A, B."""
    p = np.asarray(TA_WRONG_PROBS)
    if tie_share is None:
        a, b = rng.choice(4, size=2, p=p)
        return int(a), int(b)
    if rng.random() < tie_share:
        k = int(rng.choice(4, p=p**2 / np.sum(p**2)))
        return k, k
    while True:
        a, b = rng.choice(4, size=2, p=p)
        if a != b:
            return int(a), int(b)


def preference_label(a: float, b: float, margin: float) -> str:
    """ "A" if a exceeds b by at least `margin`, "B" the other way round, else "same" (higher is better)."""
    if a - b >= margin:
        return "A"
    if b - a >= margin:
        return "B"
    return "same"


def sample_pair(cfg: SynthConfig, i: int) -> PairSpec:
    """Pair i of the benchmark, without rendering: prompt, both videos' specs and the (noisy) labels."""
    rng = np.random.default_rng([cfg.seed, i, 0])
    attrs = (
        COLORS[rng.integers(len(COLORS))],
        SHAPES[rng.integers(len(SHAPES))],
        DIRECTIONS[rng.integers(len(DIRECTIONS))],
    )
    ta_a, ta_b = sample_ta_pair(rng, cfg.ta_tie_share)
    a = sample_video_spec(rng, attrs, ta_a)
    b = sample_video_spec(rng, attrs, ta_b)
    labels = {
        "VQ": preference_label(a.vq, b.vq, cfg.tie_margin),
        "MQ": preference_label(a.mq, b.mq, cfg.tie_margin),
        "TA": preference_label(-a.ta, -b.ta, 0.5),  # fewer wrong attributes is better
    }
    # Drawn whatever label_noise is, so that the clean labels and levels do not depend on it.
    flip, pick = rng.random(len(DIMENSIONS)), rng.integers(2, size=len(DIMENSIONS))
    for d, dim in enumerate(DIMENSIONS):
        if flip[d] < cfg.label_noise:
            labels[dim] = [v for v in LABELS if v != labels[dim]][pick[d]]
    return PairSpec(make_prompt(*attrs), attrs, a, b, labels)


def shape_sdf(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (px, > 0 outside) to a shape inscribed in the 2r x 2r box centred at the origin;
    exact for the circle, a max of edge distances (exact near the edges) for the polygons."""
    if shape == "circle":
        return np.hypot(dx, dy) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - r
    if shape == "triangle":  # apex up at (0, -r), base from (-r, r) to (r, r)
        s5 = np.sqrt(5.0)
        return np.maximum(dy - r, np.maximum((-2 * dx - (dy + r)) / s5, (2 * dx - (dy + r)) / s5))
    raise ValueError(f"unknown shape {shape!r}")


def object_track(
    direction: str,
    mq: float,
    rng: np.random.Generator,
    frames: int,
    size: tuple[int, int],
    radius: float,
    speed: float,
    max_jitter: float,
    start: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Centres [T, 2] (x, y) on a constant-velocity path plus jitter of (1 - mq) * max_jitter px in a random
    direction per frame, and the frozen frames [T] bool. The start is drawn so the whole path stays inside; a
    given `start` (x, y) is kept, and the object then stops at the frame's edge."""
    h, w = size
    jitter = (1.0 - mq) * max_jitter
    vx, vy = DIRECTION_VECTORS[direction]
    margin = radius + jitter + 1.0
    # A longer clip than the frame can hold slows the object down rather than letting it leave.
    room = min(w, h) - 2 * margin
    speed = min(speed, max(room, 0.0) / max(frames - 1, 1))
    travel = speed * (frames - 1)
    t = np.arange(frames)
    if start is not None:
        centres = np.stack([start[0] + vx * speed * t, start[1] + vy * speed * t], axis=1)
        centres = np.clip(centres, margin, np.maximum([w - margin, h - margin], margin))
    else:
        start = []
        for extent, v in ((w, vx), (h, vy)):
            lo, hi = margin, extent - margin - abs(v) * travel  # range of the path's low end on this axis
            low_end = rng.uniform(lo, hi) if hi > lo else (extent - abs(v) * travel) / 2
            start.append(low_end + (travel if v < 0 else 0.0))
        centres = np.stack([start[0] + vx * speed * t, start[1] + vy * speed * t], axis=1)
    angle = rng.uniform(0, 2 * np.pi, size=frames)
    centres += jitter * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    n_frozen = min(int(round((1.0 - mq) * MAX_FROZEN)), max(frames - 2, 0))
    frozen = np.zeros(frames, bool)
    frozen[1 + rng.choice(frames - 1, size=n_frozen, replace=False)] = True
    return centres, frozen


def render_video(
    color: str,
    shape: str,
    direction: str,
    vq: float,
    mq: float,
    rng: np.random.Generator,
    frames: int = 16,
    size: tuple[int, int] = (56, 56),
    radius: float | None = None,
    speed: float | None = None,
    start: tuple[float, float] | None = None,
) -> np.ndarray:
    """uint8 [T, H, W, 3]: an anti-aliased `color` `shape` moving `direction` on a dark background, degraded by
    blur sigma (1 - vq) * 1.5 and noise sigma (1 - vq) * 0.25 (VQ), per-frame jitter and frozen frames (MQ).
    A frozen frame repeats the previous frame exactly (noise included) while the path goes on, as a stutter does.
    Pixel quantities (radius, speed, jitter, blur) scale with min(H, W) / 56 unless given."""
    h, w = size
    scale = min(h, w) / REFERENCE_SIZE
    radius = RADIUS * scale if radius is None else radius
    speed = SPEED * scale if speed is None else speed
    centres, frozen = object_track(direction, mq, rng, frames, size, radius, speed, MAX_JITTER * scale, start)
    shown = np.arange(frames)
    for t in range(1, frames):
        if frozen[t]:
            shown[t] = shown[t - 1]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    dx = xs[None] - centres[:, 0, None, None].astype(np.float32)
    dy = ys[None] - centres[:, 1, None, None].astype(np.float32)
    coverage = np.clip(0.5 - shape_sdf(shape, dx, dy, radius), 0.0, 1.0)  # 1-px soft edge = anti-aliasing
    bg = np.asarray(BACKGROUND_RGB, np.float32)
    img = bg + coverage[..., None] * (np.asarray(COLOR_RGB[color], np.float32) - bg)
    blur = (1.0 - vq) * MAX_BLUR * scale
    if blur > 1e-3:
        img = gaussian_filter(img, sigma=(0, blur, blur, 0), mode="nearest")
    noise = (1.0 - vq) * MAX_NOISE
    if noise > 0:
        img = img + rng.normal(0.0, noise, size=img.shape).astype(np.float32)
    img = img[shown]
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def render_pair(cfg: SynthConfig, i: int, pair: PairSpec | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The two videos of pair i, each from its own generator stream (independent of the label draws)."""
    pair = sample_pair(cfg, i) if pair is None else pair
    size = parse_size(cfg.size)
    start = image = None
    if cfg.i2v:
        start, image = first_frame(cfg, i, pair, size)
    out = []
    for k, spec in enumerate((pair.a, pair.b), start=1):
        rng = np.random.default_rng([cfg.seed, i, k])
        video = render_video(
            spec.color, spec.shape, spec.direction, spec.vq, spec.mq, rng, frames=cfg.frames, size=size, start=start
        )
        if image is not None:
            video[0] = image
        out.append(video)
    return out[0], out[1]


def first_frame(cfg: SynthConfig, i: int, pair: PairSpec, size: tuple[int, int]):
    """Image-to-video mode: the start (x, y) both videos of pair i share, drawn so the prompt's path stays inside,
    and their common first frame, the prompt's object drawn clean there (from the pair's own stream 3)."""
    rng = np.random.default_rng([cfg.seed, i, 3])
    scale = min(size) / REFERENCE_SIZE
    color, shape, direction = pair.prompt_attrs
    path, _ = object_track(direction, 1.0, rng, cfg.frames, size, RADIUS * scale, SPEED * scale, MAX_JITTER * scale)
    start = (float(path[0, 0]), float(path[0, 1]))
    image = render_video(color, shape, direction, 1.0, 1.0, rng, frames=1, size=size, start=start)[0]
    return start, image


# Manifest schema: SPEC §2.1 columns, then the ground truth (levels and the attributes actually rendered).
_COLUMNS = {
    "path_A": pa.string(),
    "path_B": pa.string(),
    "prompt": pa.string(),
    "VQ": pa.string(),
    "MQ": pa.string(),
    "TA": pa.string(),
    "fps_A": pa.float64(),
    "num_frames_A": pa.int64(),
    "fps_B": pa.float64(),
    "num_frames_B": pa.int64(),
    **{f"gt_{k}_{s}": t for s in "AB" for k, t in (("vq", pa.float64()), ("mq", pa.float64()), ("ta", pa.int64()))},
    **{f"gt_{k}_{s}": pa.string() for s in "AB" for k in ATTRIBUTES},
    # Pointwise 1-5 opinion scores derived from the ground truth (SPEC §2.1 MOS columns, for regression training).
    **{f"MOS_{s}_{d}": pa.float64() for s in "AB" for d in DIMENSIONS},
}


def mos_from_levels(vq: float, mq: float, ta: int) -> dict[str, float]:
    """1-5 scores: VQ = 1 + 4·vq, MQ = 1 + 4·mq, TA = 5 - 4·ta/3 (no wrong attribute = 5)."""
    return {"VQ": 1.0 + 4.0 * vq, "MQ": 1.0 + 4.0 * mq, "TA": 5.0 - 4.0 * ta / 3.0}


def _render_rows(out: str, cfg: SynthConfig, indices) -> list[dict]:
    """Render and write pairs `indices`; their manifest rows (a worker's share of make_synthpref)."""
    rows = []
    for i in indices:
        pair = sample_pair(cfg, i)
        videos = render_pair(cfg, i, pair)
        row: dict = {"prompt": pair.prompt, **pair.labels}
        for side, spec, frames in (("A", pair.a, videos[0]), ("B", pair.b, videos[1])):
            rel = f"videos/{i:06d}_{side}.mp4"
            write_mp4(frames, Path(out) / rel, cfg.fps)
            row.update(
                {
                    f"path_{side}": rel,
                    f"fps_{side}": float(cfg.fps),
                    f"num_frames_{side}": len(frames),
                    f"gt_vq_{side}": spec.vq,
                    f"gt_mq_{side}": spec.mq,
                    f"gt_ta_{side}": spec.ta,
                    f"gt_color_{side}": spec.color,
                    f"gt_shape_{side}": spec.shape,
                    f"gt_direction_{side}": spec.direction,
                    **{f"MOS_{side}_{d}": v for d, v in mos_from_levels(spec.vq, spec.mq, spec.ta).items()},
                }
            )
        rows.append(row)
    return rows


def check_config(cfg: SynthConfig) -> tuple[int, int]:
    """Refuse settings that cannot be generated; (H, W)."""
    h, w = parse_size(cfg.size)
    if h % 2 or w % 2:
        raise ValueError(f"size must have even H and W (H.264 4:2:0), got {cfg.size!r}")
    if cfg.pairs < 0 or cfg.frames < 2 or cfg.fps <= 0:
        raise ValueError(f"need pairs >= 0, frames >= 2, fps > 0; got {cfg.pairs}, {cfg.frames}, {cfg.fps}")
    if not 0.0 <= cfg.label_noise <= 1.0 or not 0.0 <= cfg.tie_margin <= 1.0:
        raise ValueError(f"label_noise and tie_margin must lie in [0, 1]; got {cfg.label_noise}, {cfg.tie_margin}")
    if not 0.0 <= cfg.rating_noise <= 1.0:
        raise ValueError(f"rating_noise must lie in [0, 1]; got {cfg.rating_noise}")
    if cfg.ta_tie_share is not None and not 0.0 <= cfg.ta_tie_share <= 1.0:
        raise ValueError(f"ta_tie_share must lie in [0, 1] or be None; got {cfg.ta_tie_share}")
    return h, w


def make_synthpref(
    out_dir: str | os.PathLike, cfg: SynthConfig, progress: bool = False, workers: int | None = None
) -> pa.Table:
    """Render cfg.pairs pairs to `out_dir/videos/{i:06d}_{A,B}.mp4` and write `out_dir/manifest.parquet`
    (SPEC §2.1 columns with paths relative to out_dir, plus gt_* ground truth) and `out_dir/ratings.parquet` (the
    same videos one per row, rated Good/Normal/Bad with reasons: `synth_ratings`). Returns the manifest."""
    from raypipe.video.synth_ratings import pointwise_ratings

    check_config(cfg)
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    # Each pair draws from its own seeded streams, so splitting the work over processes changes nothing.
    workers = max(1, min(workers or os.cpu_count() or 1, 8, cfg.pairs // 64 or 1))
    chunks = [range(start, min(cfg.pairs, start + 32)) for start in range(0, cfg.pairs, 32)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.pairs, desc="synthpref", unit="pair")
    results: list[list[dict]] = []
    if workers == 1:
        for chunk in chunks:
            results.append(_render_rows(str(out), cfg, chunk))
            if bar:
                bar.update(len(chunk))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            for chunk, part in zip(
                chunks, pool.map(_render_rows, [str(out)] * len(chunks), [cfg] * len(chunks), chunks)
            ):
                results.append(part)
                if bar:
                    bar.update(len(chunk))
    if bar:
        bar.close()
    rows: dict[str, list] = {k: [r[k] for part in results for r in part] for k in _COLUMNS}
    table = pa.table({k: pa.array(v, type=_COLUMNS[k]) for k, v in rows.items()})
    pq.write_table(table, out / "manifest.parquet")
    pq.write_table(pointwise_ratings(table, cfg.rating_noise, cfg.seed), out / "ratings.parquet")
    return table


def manifest_or_synthpref(
    manifest: str | None, folder: str | os.PathLike, cfg: SynthConfig, key: str, progress: bool = False
) -> str:
    """`manifest` when one is given, else a seeded SynthPref set written to `folder` (what the tiny presets train
    on when the config names no data); `key` is the config key that was left empty, for the message."""
    if manifest is not None:
        return manifest
    print(f"no {key}: synthesising SynthPref ({cfg.pairs} pairs, seed {cfg.seed}) in {folder}", flush=True)
    make_synthpref(folder, cfg, progress=progress)
    return str(Path(folder) / "manifest.parquet")
