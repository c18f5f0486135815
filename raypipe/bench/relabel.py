"""`raypipe bench relabel`: videos/s of (a) the reference-style loop, (b) relabel with 1 actor, (c) with 2.

Same checkpoint (the tiny VideoReward unless --reward), same SynthPref videos, one run:
  (a) one process, like the public reference inference code: decode a batch of 8 videos, score them, repeat
      (torch with its default threads, i.e. every core; decoding and scoring never overlap);
  (b) `raypipe relabel` with 1 scoring actor: Ray Data decode tasks and the actor overlap, forward passes of up to
      --batch videos; includes writing the resume shards and assembling the output parts;
  (c) the same with 2 scoring actors (on a 2-core machine they share the cores with decoding).
Every run starts from a loaded model: (a) loads it before timing, (b)/(c) after a warm-up run that starts
Ray's workers; actor start-up (model load) is inside (b)/(c).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq

from raypipe.config import SamplingConfig, SynthConfig

TINY_SAMPLING = SamplingConfig(fps=4.0, max_frames=16)
REFERENCE_BATCH = 8  # the public reference inference code decodes and scores 8 videos at a time


def reference_loop(checkpoint: str, videos: list[tuple[str, str]], sampling: SamplingConfig, batch: int = 8) -> dict:
    """(a): decode 8, score 8, repeat, in this process."""
    from raypipe.reward.model import VideoReward
    from raypipe.video.decode import VideoClip, decode_video

    model = VideoReward.from_pretrained(checkpoint)
    start = time.perf_counter()
    scored = 0
    decode_s = 0.0
    for i in range(0, len(videos), batch):
        t0 = time.perf_counter()
        clips = [(decode_video(uri, sampling), prompt) for uri, prompt in videos[i : i + batch]]
        decode_s += time.perf_counter() - t0
        good = [(c.frames, p) for c, p in clips if isinstance(c, VideoClip)]
        if good:
            model.score([g[0] for g in good], [g[1] for g in good])
        scored += len(clips)
    wall = time.perf_counter() - start
    return {
        "videos": scored,
        "wall_s": round(wall, 3),
        "videos_per_s": round(scored / wall, 3),
        "decode_share": round(decode_s / wall, 3),
    }


def reference_process(
    checkpoint: str, videos: list[tuple[str, str]], sampling: SamplingConfig, batch: int, work: Path
) -> dict:
    """(a) as users run it: a fresh Python process (imports + model load + loop), timed from its start."""
    import subprocess
    import sys

    spec = work / "reference_videos.json"
    spec.write_text(
        json.dumps(
            {"checkpoint": checkpoint, "videos": videos, "batch": batch, "sampling": dataclasses.asdict(sampling)}
        )
    )
    code = (
        "import json, sys, time; t0 = time.perf_counter()\n"
        "from raypipe.config import SamplingConfig\n"
        "from raypipe.bench.relabel import reference_loop\n"
        f"spec = json.load(open({str(spec)!r}))\n"
        "r = reference_loop(spec['checkpoint'], [tuple(v) for v in spec['videos']], "
        "SamplingConfig(**spec['sampling']), spec['batch'])\n"
        "r['process_wall_s'] = round(time.perf_counter() - t0, 3)\n"
        "print('RESULT' + json.dumps(r))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    r = json.loads(line[len("RESULT") :])
    r["steady_videos_per_s"] = r.pop("videos_per_s")  # the loop alone, model already loaded
    r["videos_per_s"] = round(r["videos"] / r["process_wall_s"], 3)  # whole process, like (b)/(c)'s job wall
    return r


def pipeline(
    checkpoint: str,
    manifest: str,
    out: Path,
    sampling: SamplingConfig,
    concurrency: int,
    batch_size: int,
    actor_cpus: float = 0.5,
    decode_cpus: float = 0.75,
    decode_rows: int = 32,
) -> dict:
    from raypipe.recipes.relabel import RelabelConfig
    from raypipe.recipes.relabel import run as run_relabel

    shutil.rmtree(out, ignore_errors=True)
    cfg = RelabelConfig(
        reward=checkpoint,
        input=manifest,
        out=str(out),
        sampling=sampling,
        concurrency=concurrency,
        batch=batch_size,
        actor_cpus=actor_cpus,
        decode_cpus=decode_cpus,
        decode_rows=decode_rows,
        progress=False,
    )
    start = time.perf_counter()
    summary = run_relabel(cfg)
    wall = time.perf_counter() - start
    n = summary["videos_scored_this_run"]
    return {
        "videos": n,
        "wall_s": round(wall, 3),
        "videos_per_s": round(n / wall, 3),
        "first_batch_s": summary["first_batch_s"],
        "rows": summary["rows"],
        "rows_ok": summary["rows_ok"],
        "concurrency": concurrency,
        "actor_cpus": actor_cpus,
        "decode_cpus": decode_cpus,
    }


def run_relabel_bench(args) -> dict:
    if args.rows:
        return run_rows_bench(args)
    from raypipe.distributed.cluster import configure_data_context, init_ray

    out = Path(args.out)
    work = out.parent / "relabel-bench-work"
    work.mkdir(parents=True, exist_ok=True)
    data = _synthpref(work, args.pairs, args.seed)
    manifest = str(data / "manifest.parquet")
    checkpoint = args.reward or _tiny_checkpoint(work / "tiny-checkpoint")
    videos = _videos(manifest, checkpoint)

    init_ray(num_cpus=args.num_cpus, quiet=True)
    configure_data_context(progress=False)
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    warm = data / "warm.parquet"  # beside the videos: its relative paths resolve
    pq.write_table(pq.read_table(manifest).slice(0, 4), warm)
    pipeline(checkpoint, str(warm), work / "warm-out", TINY_SAMPLING, 1, args.batch)  # start workers
    half = data / "half.parquet"  # the first half of the pairs: a second size for the marginal rate
    pq.write_table(pq.read_table(manifest).slice(0, args.pairs // 2), half)
    print(f"(a) reference loop over {len(videos)} videos, batches of {REFERENCE_BATCH} ...", flush=True)
    a = reference_process(checkpoint, videos, TINY_SAMPLING, REFERENCE_BATCH, work)
    print(f"    {a['videos_per_s']} videos/s end to end, {a['steady_videos_per_s']} in the loop", flush=True)
    b = _relabel_run(args, "b", 1, checkpoint, str(half), manifest, work)
    c = _relabel_run(args, "c", 2, checkpoint, str(half), manifest, work)
    result = _result(args, len(videos), checkpoint, cpus, a, b, c)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


def _synthpref(work: Path, pairs: int, seed: int) -> Path:
    """The SynthPref set of `pairs` pairs under `work`, rendered once."""
    from raypipe.video.synth import make_synthpref

    data = work / f"synth_{pairs}_{seed}"
    if not (data / "manifest.parquet").exists():
        print(f"rendering {pairs} SynthPref pairs -> {data}", flush=True)
        make_synthpref(data, SynthConfig(pairs=pairs, seed=seed), workers=os.cpu_count() or 1)
    return data


def _videos(manifest: str, checkpoint: str) -> list[tuple[str, str]]:
    """(uri, prompt) of every video of the manifest, in relabel's order; the manifest validated like the job does."""
    from raypipe.data.inputs import resolve_input
    from raypipe.data.manifest import load_manifest
    from raypipe.reward.relabel import scan
    from raypipe.reward.scoring import checkpoint_dimensions

    dims = checkpoint_dimensions(checkpoint)
    videos_table = scan(resolve_input(manifest))[0].table()
    videos = list(zip(videos_table.column("uri").to_pylist(), videos_table.column("prompt").to_pylist()))
    load_manifest(manifest, dims)
    return videos


def _relabel_run(args, name: str, concurrency: int, checkpoint: str, half: str, manifest: str, work: Path) -> dict:
    """(b)/(c): relabel with `concurrency` scoring actors on half then all of the pairs; the full run's figures
    plus the steady (marginal) rate between the two."""
    print(f"({name}) relabel, {concurrency} scoring actor(s), half then all of the pairs ...", flush=True)
    small = pipeline(
        checkpoint, half, work / f"out-{name}", TINY_SAMPLING, concurrency, args.batch, decode_rows=args.decode_rows
    )
    full = pipeline(
        checkpoint, manifest, work / f"out-{name}", TINY_SAMPLING, concurrency, args.batch, decode_rows=args.decode_rows
    )
    full["steady_videos_per_s"] = round((full["videos"] - small["videos"]) / (full["wall_s"] - small["wall_s"]), 3)
    full["half_run"] = {k: small[k] for k in ("videos", "wall_s", "videos_per_s")}
    print(f"    {full['videos_per_s']} videos/s end to end, {full['steady_videos_per_s']} steady", flush=True)
    return full


def _result(args, n_videos: int, checkpoint: str, cpus: int, a: dict, b: dict, c: dict) -> dict:
    return {
        "benchmark": "relabel",
        "data": {
            "synthpref_pairs": args.pairs,
            "videos": n_videos,
            "seed": args.seed,
            "sampling": dataclasses.asdict(TINY_SAMPLING),
        },
        "checkpoint": checkpoint,
        "batch_size": args.batch,
        "machine": {"cpus_for_ray": cpus, "cpu_count": os.cpu_count(), "platform": platform.platform()},
        "a_reference_loop": a,
        "b_relabel_1_actor": b,
        "c_relabel_2_actors": c,
        "ratio_b_over_a_steady": _ratio(b["steady_videos_per_s"], a["steady_videos_per_s"]),
        "ratio_b_over_a_end_to_end": _ratio(b["videos_per_s"], a["videos_per_s"]),
        "ratio_c_over_b_steady": _ratio(c["steady_videos_per_s"], b["steady_videos_per_s"]),
        "ratio_c_over_b_end_to_end": _ratio(c["videos_per_s"], b["videos_per_s"]),
        "targets": {"b_over_a": ">= 1.5", "c_over_b": "reported"},
        "notes": [
            "steady: (a) the loop with the model loaded; (b)/(c) the marginal rate between a run on half the "
            "pairs and one on all, (videos_all - videos_half) / (wall_all - wall_half): fixed costs (actor "
            "start-up: importing transformers and loading the model in a new process, ~7-10 s here) cancel. "
            "end to end: (a) a fresh process incl. imports and model load; (b)/(c) the whole relabel job "
            "incl. actor start-up, resume shards and output assembly, on a running Ray."
        ],
    }


def _ratio(x, y):
    return round(x / y, 3) if x and y else None


def _tiny_checkpoint(path: Path) -> str:
    """An untrained tiny VideoReward (speed does not depend on the weights), written once."""
    if (path / "reward_config.json").exists():
        return str(path)
    import torch

    from raypipe.reward.model import RewardModelConfig, VideoReward
    from raypipe.reward.scoring import SAMPLING_FILE

    torch.manual_seed(0)
    model = VideoReward.build(RewardModelConfig(), tiny_dir=path.parent / "tiny-backbone")
    model.save_pretrained(path, extra={SAMPLING_FILE: dataclasses.asdict(TINY_SAMPLING)})
    return str(path)


# --- the row side: driver memory and rows/s as pair rows grow over the same videos -------------------------
ROWS_PAIRS = 50  # SynthPref pairs whose 100 videos every row count reuses


def run_rows_bench(args) -> dict:
    """`--rows N1,N2,...`: for each N, a manifest of N pair rows cycling over the same 100 videos, relabelled by a
    fresh `raypipe relabel` process (its own local Ray); its peak RSS (the driver's own ru_maxrss), the row side's
    rows/s (the walk that finds the videos + the walk that writes the parts), and a check that the parts hold
    row_id 0..N-1 once each, in order. The smallest N is the baseline of the ratios."""
    import subprocess
    import sys

    counts = sorted(int(float(n)) for n in str(args.rows).split(","))
    out = Path(args.out)
    work = out.parent / "relabel-rows-work"
    work.mkdir(parents=True, exist_ok=True)
    data = _synthpref(work, ROWS_PAIRS, args.seed)
    checkpoint = args.reward or _tiny_checkpoint(work / "tiny-checkpoint")
    runs = []
    for n in counts:
        manifest = _tiled_manifest(data, n)
        target = work / f"out-{n}"
        shutil.rmtree(target, ignore_errors=True)
        code = (
            "import json, resource, time; t0 = time.perf_counter()\n"
            "from raypipe.config import SamplingConfig\n"
            "from raypipe.recipes.relabel import RelabelConfig, run\n"
            f"s = run(RelabelConfig(reward={checkpoint!r}, input={manifest!r}, out={str(target)!r}, "
            f"sampling=SamplingConfig(**{dataclasses.asdict(TINY_SAMPLING)!r}), batch={args.batch}, progress=False))\n"
            "s['process_wall_s'] = time.perf_counter() - t0\n"
            "s['driver_peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
            "print('RESULT' + json.dumps(s))\n"
        )
        print(f"relabel of {n:,} pair rows over {2 * ROWS_PAIRS} videos ...", flush=True)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"relabel of {n} rows failed:\n{proc.stderr[-3000:]}")
        s = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))[len("RESULT") :])
        check = _check_parts(target, n)
        row_s = s["rows_scan_s"] + s["rows_write_s"]
        runs.append(
            {
                "rows": n,
                "videos": s["videos"],
                "driver_peak_rss_mb": round(s["driver_peak_rss_mb"], 1),
                "rows_per_s": round(n / row_s, 1) if row_s > 0 else None,
                "rows_scan_s": s["rows_scan_s"],
                "rows_write_s": s["rows_write_s"],
                "scoring_wall_s": s["scoring_wall_s"],
                "wall_s": round(s["process_wall_s"], 2),
                "parts": len(s["parts"]),
                **check,
            }
        )
        print(f"    {json.dumps(runs[-1])}", flush=True)
        shutil.rmtree(target, ignore_errors=True)
    base = runs[0]
    result = {
        "benchmark": "relabel-rows",
        "data": {"videos": 2 * ROWS_PAIRS, "seed": args.seed, "rows": counts},
        "checkpoint": checkpoint,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "runs": runs,
        "baseline_rows": base["rows"],
        "rss_ratio_over_baseline": {
            r["rows"]: round(r["driver_peak_rss_mb"] / base["driver_peak_rss_mb"], 3) for r in runs
        },
        "notes": [
            "driver_peak_rss_mb: the relabel process's own peak resident memory (ru_maxrss), which includes "
            "starting a local Ray and holding the scored videos; flat in rows means the row side streams.",
            "rows_per_s: rows / (rows_scan_s + rows_write_s), the two walks over the input on the driver.",
            "every_row_once: the output parts hold row_id 0..N-1 exactly once, in order.",
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


def _tiled_manifest(data: Path, n: int) -> str:
    """data/rows-N.parquet: N rows cycling over the SynthPref manifest's rows (written a million rows at a time)."""
    import numpy as np
    import pyarrow as pa

    path = data / f"rows-{n}.parquet"
    if path.exists():
        return str(path)
    base = pq.read_table(data / "manifest.parquet")
    tmp = path.with_suffix(".tmp")
    with pq.ParquetWriter(tmp, base.schema) as writer:
        for start in range(0, n, 1_000_000):
            idx = np.arange(start, min(n, start + 1_000_000)) % base.num_rows
            writer.write_table(base.take(pa.array(idx)))
    tmp.rename(path)
    return str(path)


def _check_parts(folder: Path, n: int) -> dict:
    """Every row once and in order: row_id over the parts is exactly 0..n-1."""
    import numpy as np

    expected, ok = 0, True
    for part in sorted(folder.glob("part-*.parquet")):
        ids = pq.read_table(part, columns=["row_id"]).column("row_id").to_numpy()
        ok = ok and bool(np.array_equal(ids, np.arange(expected, expected + len(ids))))
        expected += len(ids)
    return {"every_row_once": ok and expected == n, "rows_written": expected}
