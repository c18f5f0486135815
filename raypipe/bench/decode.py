"""`raypipe bench decode`: pairs/s of (a) a tight decord loop, (b) our pair pipeline, (c) read_videos.

All three decode the same sampled frames (SPEC §2.3) of the same SynthPref clips rendered at a realistic size
(default 5 s, 24 fps, 360x640, H.264 with libx264's default GOP), in one run:
  (a) one process, one decoding thread: decord VideoReader + get_batch(indices) + our resize. The limit for
      one core; "per core" ratios divide by the decode slots (b) uses.
  (b) `pair_dataset` on the local Ray: validated manifest -> Ray Data tasks -> pyarrow batches at the driver.
  (c) `ray.data.read_videos` on the same files, then a filter keeping only the sampled frame indices (it decodes
      every frame, one row per frame); only counted, not regrouped into pairs, which flatters (c).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raypipe.config import DataConfig, SamplingConfig
from raypipe.video.sampling import resized_size, sample_frame_indices

DISTINCT_CLIPS = 8  # clips are reused across pairs: rendering 360p clips is slower than decoding them


def make_clips(data_dir: Path, n: int, seconds: float, video_fps: float, size: tuple[int, int]) -> list[str]:
    """SynthPref-style clips at a realistic size, written once and reused across runs."""
    from raypipe.video.encode import write_mp4
    from raypipe.video.synth import COLORS, DIRECTIONS, SHAPES, render_video

    data_dir.mkdir(parents=True, exist_ok=True)
    frames = int(round(seconds * video_fps))
    paths = []
    for i in range(n):
        path = data_dir / f"clip_{i}_{frames}f_{size[0]}x{size[1]}.mp4"
        if not path.exists():
            rng = np.random.default_rng(i)
            video = render_video(
                COLORS[i % len(COLORS)],
                SHAPES[i % len(SHAPES)],
                DIRECTIONS[i % len(DIRECTIONS)],
                vq=float(rng.uniform(0.3, 1)),
                mq=float(rng.uniform(0.3, 1)),
                rng=rng,
                frames=frames,
                size=size,
            )
            write_mp4(video, path, video_fps)
        paths.append(str(path))
    return paths


def tight_decord_loop(pairs: list[tuple[str, str]], sampling: SamplingConfig) -> dict:
    """(a): the same decode work in one process, one thread, no framework."""
    import decord

    from raypipe.video.decode import resize_frames

    start = time.perf_counter()
    frames = 0
    for pair in pairs:
        for path in pair:
            reader = decord.VideoReader(path, num_threads=1)
            idx = sample_frame_indices(
                len(reader), reader.get_avg_fps(), sampling.fps, sampling.min_frames, sampling.max_frames
            )
            batch = reader.get_batch(idx).asnumpy()
            h, w = resized_size(batch.shape[1], batch.shape[2], sampling.min_pixels, sampling.max_pixels)
            frames += len(resize_frames(batch, h, w))
            del reader
    wall = time.perf_counter() - start
    return {"pairs": len(pairs), "frames": frames, "wall_s": round(wall, 3), "pairs_per_s": len(pairs) / wall}


def ray_pair_pipeline(manifest_path: str, sampling: SamplingConfig, rows_per_block: int) -> dict:
    """(b): our pipeline, streamed to the driver as pyarrow batches."""
    from raypipe.data.manifest import load_manifest
    from raypipe.distributed.decode import pair_dataset

    start, cpu_start = time.perf_counter(), time.process_time()
    manifest = load_manifest(manifest_path, dimensions=("VQ",), require_labels=False)
    ds = pair_dataset(manifest, DataConfig(sampling=sampling, rows_per_block=rows_per_block))
    rows = frames = errors = 0
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        rows += batch.num_rows
        errors += sum(e is not None for e in batch.column("error").to_pylist())
        for side in ("A", "B"):
            frames += sum(len(ix or []) for ix in batch.column(f"indices_{side}").to_pylist())
    wall = time.perf_counter() - start
    return {
        "pairs": rows,
        "frames": frames,
        "errors": int(errors),
        "wall_s": round(wall, 3),
        "pairs_per_s": rows / wall,
        "driver_cpu_s": round(time.process_time() - cpu_start, 3),
    }


def ray_read_videos(pairs: list[tuple[str, str]], sampling: SamplingConfig) -> dict:
    """(c): ray.data.read_videos (one row per decoded frame), keeping only the sampled indices."""
    import decord
    import ray.data

    wanted = {}
    for path in {p for pair in pairs for p in pair}:
        reader = decord.VideoReader(path, num_threads=1)
        wanted[path] = set(
            sample_frame_indices(
                len(reader), reader.get_avg_fps(), sampling.fps, sampling.min_frames, sampling.max_frames
            )
        )
        del reader
    files = [p for pair in pairs for p in pair]  # each occurrence read again, as the pipeline does

    def keep(batch):
        mask = [int(i) in wanted[p] for p, i in zip(batch["path"], batch["frame_index"])]
        return {k: v[np.asarray(mask, bool)] for k, v in batch.items()}

    start = time.perf_counter()
    ds = ray.data.read_videos(files, include_paths=True).map_batches(keep, batch_format="numpy")
    frames = sum(len(b["frame_index"]) for b in ds.iter_batches(batch_format="numpy", batch_size=None))
    wall = time.perf_counter() - start
    return {"pairs": len(pairs), "frames": int(frames), "wall_s": round(wall, 3), "pairs_per_s": len(pairs) / wall}


def run_decode_bench(args) -> dict:
    from raypipe.distributed.cluster import configure_data_context, init_ray

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    h, w = (int(x) for x in args.size.lower().split("x"))
    data_dir = Path(args.data_dir) if args.data_dir else out.parent / "decode-bench-data"
    sampling = SamplingConfig(fps=args.fps)
    print(
        f"rendering {DISTINCT_CLIPS} clips {h}x{w}, {args.seconds}s at {args.video_fps} fps -> {data_dir}", flush=True
    )
    clips = make_clips(data_dir, DISTINCT_CLIPS, args.seconds, args.video_fps, (h, w))
    pairs = [(clips[(2 * i) % len(clips)], clips[(2 * i + 1) % len(clips)]) for i in range(args.pairs)]
    manifest_path = _write_manifest(data_dir / f"bench_manifest_{args.pairs}.parquet", pairs)

    init_ray(num_cpus=args.num_cpus, quiet=True)
    configure_data_context(progress=False)
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    rows_per_block = args.rows_per_block
    # Warm-up (worker processes, imports), not timed: a few pairs through (b) and (c).
    ray_pair_pipeline(_write_manifest(data_dir / "warm.parquet", pairs[:cpus]), sampling, rows_per_block)
    ray_read_videos(pairs[:1], sampling)
    print("(a) tight decord loop ...", flush=True)
    a = tight_decord_loop(pairs, sampling)
    print(f"    {a['pairs_per_s']:.3f} pairs/s", flush=True)
    print(f"(b) raypipe pair pipeline on {cpus} CPUs ...", flush=True)
    b = ray_pair_pipeline(manifest_path, sampling, rows_per_block)
    print(f"    {b['pairs_per_s']:.3f} pairs/s", flush=True)
    print("(c) ray.data.read_videos + filter ...", flush=True)
    c = ray_read_videos(pairs, sampling)
    print(f"    {c['pairs_per_s']:.3f} pairs/s", flush=True)
    ratio_ba = b["pairs_per_s"] / a["pairs_per_s"]
    result = {
        "benchmark": "decode",
        "clips": {
            "size": [h, w],
            "seconds": args.seconds,
            "video_fps": args.video_fps,
            "distinct_clips": len(clips),
            "sampling_fps": args.fps,
            "codec": "h264 (libx264 default GOP)",
        },
        "machine": {"cpus_for_ray": cpus, "cpu_count": os.cpu_count(), "platform": platform.platform()},
        "a_tight_decord_loop": a,
        "b_raypipe_pairs": b,
        "c_ray_read_videos": c,
        "rows_per_block": rows_per_block,
        "ratio_b_over_a": round(ratio_ba, 3),
        "ratio_b_over_a_per_core": round(ratio_ba / cpus, 3),
        "ratio_b_over_c": round(b["pairs_per_s"] / c["pairs_per_s"], 3),
        "targets": {"b_over_a_per_core": ">= 0.9", "b_over_c": "> 1 (clearly)"},
    }
    out.write_text(json.dumps(result, indent=2))
    return result


def _write_manifest(path: Path, pairs) -> str:
    pq.write_table(
        pa.table({"path_A": [a for a, _ in pairs], "path_B": [b for _, b in pairs], "prompt": ["bench"] * len(pairs)}),
        path,
    )
    return str(path)
