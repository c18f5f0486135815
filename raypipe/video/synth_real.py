"""SynthPref's "real videos" (LiFT mixes real footage, OpenVid, into its fine-tuning): clean renders that show
exactly what their caption says — full quality (vq = 1), smooth motion (mq = 1), no wrong attribute.

    table = make_real_synthpref("/tmp/real", count=128, cfg=SynthConfig(seed=5))   # videos/ + manifest.parquet

A pointwise manifest (`path`, `prompt`, `gt_color`, `gt_shape`, `gt_direction`); video i draws from its own
stream `default_rng([seed, i, 7])`, so the set is the same whatever `count` and the process count.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raypipe.config import SynthConfig
from raypipe.video.encode import write_mp4
from raypipe.video.synth import COLORS, DIRECTIONS, SHAPES, make_prompt, parse_size, render_video

REAL_STREAM = 7


def real_attributes(seed: int, i: int) -> tuple[str, str, str]:
    rng = np.random.default_rng([seed, i, REAL_STREAM])
    return COLORS[rng.integers(len(COLORS))], SHAPES[rng.integers(len(SHAPES))], DIRECTIONS[rng.integers(4)]


def make_real_synthpref(out_dir: str | os.PathLike, count: int, cfg: SynthConfig | None = None) -> pa.Table:
    """Render `count` clean videos to `out_dir/videos/real_{i:06d}.mp4`; write and return `manifest.parquet`."""
    cfg = cfg or SynthConfig()
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    size = parse_size(cfg.size)
    rows: dict[str, list] = {k: [] for k in ("path", "prompt", "gt_color", "gt_shape", "gt_direction")}
    for i in range(count):
        color, shape, direction = real_attributes(cfg.seed, i)
        rng = np.random.default_rng([cfg.seed, i, REAL_STREAM + 1])
        frames = render_video(color, shape, direction, 1.0, 1.0, rng, frames=cfg.frames, size=size)
        rel = f"videos/real_{i:06d}.mp4"
        write_mp4(frames, out / rel, cfg.fps)
        for k, v in zip(rows, (rel, make_prompt(color, shape, direction), color, shape, direction)):
            rows[k].append(v)
    table = pa.table({k: pa.array(v, pa.string()) for k, v in rows.items()})
    pq.write_table(table, out / "manifest.parquet")
    return table
