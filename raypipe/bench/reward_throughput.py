"""`raypipe bench reward-throughput`: train-reward's pairs/s per worker and data wait, in one run on the same data.

Three settings of the same config, each for the same number of steps on the same SynthPref pairs:
  stream_zero2  frames decoded by Ray Data tasks every epoch, beside the workers (the baseline),
  cache_zero2   every video decoded once into the object store before training (`data.cache_frames`),
  cache_zero0   the same without ZeRO partitioning (plain data parallel inside DeepSpeed).
Per setting: pairs/s per worker and the share of step time spent waiting for data, both over the whole run and in
steady state (the first report window, where the iterator and the workers warm up, left out), plus the one-time
cost of the cache. Ratios are against the baseline measured in this run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

SETTINGS = {
    "stream_zero2": ["data.cache_frames=false", "train.zero_stage=2"],
    "cache_zero2": ["data.cache_frames=true", "train.zero_stage=2"],
    "cache_zero0": ["data.cache_frames=true", "train.zero_stage=0"],
}


def _windows(curve: list[dict], key: str) -> tuple[float | None, float | None]:
    """(mean over every report window, mean without the first) — train-reward's own summary mean, twice."""
    from raypipe.recipes.train_reward import curve_mean

    return curve_mean(curve, key), curve_mean(curve[1:] or curve, key)


def run_reward_throughput(args) -> dict:
    from raypipe.config import SynthConfig, load_config
    from raypipe.recipes.train_reward import RewardTrainConfig
    from raypipe.recipes.train_reward import run as run_train_reward
    from raypipe.video.synth import make_synthpref

    out = Path(args.out)
    work = out.parent / (out.stem + "-work")
    data = work / "data"
    for name, pairs, seed in (("train", args.pairs, args.seed + 1), ("val", 32, args.seed + 2)):
        if not (data / name / "manifest.parquet").exists():
            make_synthpref(data / name, SynthConfig(pairs=pairs, seed=seed), progress=True)
    windows = 4
    every = max(1, args.steps // windows)
    results = {}
    for name in [s.strip() for s in args.settings.split(",")] if args.settings else list(SETTINGS):
        overrides = SETTINGS[name] + [
            f"data.manifest={data / 'train' / 'manifest.parquet'}",
            f"val_manifest={data / 'val' / 'manifest.parquet'}",
            f"out={work / name}",
            f"train.max_steps={args.steps}",
            "train.epochs=1000",
            "train.max_minutes=null",
            f"train.eval_every={every}",
            f"train.checkpoint_every={args.steps}",
            "progress=false",
            *args.overrides,
        ]
        cfg = load_config(RewardTrainConfig, args.config, overrides)
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        summary = run_train_reward(cfg)
        curve = json.loads((work / name / "learning_curve.json").read_text())
        rate, rate_steady = _windows(curve, "pairs_per_s_per_worker")
        wait, wait_steady = _windows(curve, "data_wait_share")
        results[name] = {
            "pairs_per_s_per_worker": rate,
            "pairs_per_s_per_worker_steady": rate_steady,
            "data_wait_share": wait,
            "data_wait_share_steady": wait_steady,
            "frame_cache_s": summary["frame_cache_s"],
            "train_wall_s": summary["wall_s"],
            "job_wall_s": round(time.perf_counter() - start, 1),
            "steps": summary["steps"],
            "workers": cfg.train.num_workers,
            "batch_pairs_per_worker": cfg.train.batch,
        }
    base = results.get("stream_zero2", {}).get("pairs_per_s_per_worker_steady")
    for r in results.values():
        r["speedup_vs_stream_zero2"] = round(r["pairs_per_s_per_worker_steady"] / base, 2) if base else None
    report = {
        "benchmark": "reward-throughput",
        "train_pairs": args.pairs,
        "steps": args.steps,
        "config": str(args.config),
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return report
