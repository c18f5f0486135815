"""`raypipe train-reward` (= jobs/train_reward.py): VideoReward on Ray Train + DeepSpeed, data from Ray Data.

Driver side only: resolve data (synthesise a seeded SynthPref train/val pair of sets when the config names no
manifest), write the tiny backbone if no real one is given, build the streaming decoded-pair datasets, run the
TorchTrainer, then copy the final checkpoint to OUT/final and write the learning curve (JSON + PNG).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

from raypipe.config import load_config, repo_path, save_config, to_dict
from raypipe.train.reward_config import RewardTrainConfig


def _prepare_data(cfg: RewardTrainConfig, out: Path) -> tuple[str, str]:
    from raypipe.video.synth import make_synthpref

    train, val = cfg.data.manifest, cfg.val_manifest
    if train is None:
        print(f"no data.manifest: synthesising SynthPref train ({cfg.synth_train.pairs} pairs, seed "
              f"{cfg.synth_train.seed})", flush=True)
        make_synthpref(out / "data" / "train", cfg.synth_train, progress=cfg.progress)
        train = str(out / "data" / "train" / "manifest.parquet")
    if val is None:
        print(f"no val_manifest: synthesising SynthPref validation ({cfg.synth_val.pairs} pairs, seed "
              f"{cfg.synth_val.seed})", flush=True)
        make_synthpref(out / "data" / "val", cfg.synth_val, progress=cfg.progress)
        val = str(out / "data" / "val" / "manifest.parquet")
    return train, val


def plot_curve(curve: list[dict], path: Path, dims: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in curve if "val" in p]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for dim in dims:
        ax.plot(steps, [p["val"][dim]["acc_without_ties"] for p in curve if "val" in p], marker="o", label=dim)
    ax.set_xlabel("step")
    ax.set_ylabel("validation accuracy (ties excluded)")
    ax.set_ylim(0.3, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_train_reward(cfg: RewardTrainConfig) -> dict:
    from raypipe.data.manifest import load_manifest
    from raypipe.data.pairs import pair_dataset
    from raypipe.ray_utils import configure_data_context, init_ray
    from raypipe.reward.backbone import make_tiny_backbone
    from raypipe.train.common import fit_trainer

    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t = cfg.train
    if t.loss not in ("bt", "btt", "regression"):
        raise ValueError(f"train.loss must be bt, btt or regression (MOS_<side>_<DIM> columns), got {t.loss!r}")
    dims = cfg.model.dimensions
    unknown = set(t.dim_weights) - set(dims)
    bad = [f"{d}={w}" for d, w in t.dim_weights.items() if not (isinstance(w, (int, float)) and 0 <= w < float("inf"))]
    if unknown or bad or (t.dim_weights and not any(t.dim_weights.get(d, 1.0) > 0 for d in dims)):
        raise ValueError(f"train.dim_weights must map dimensions of {list(dims)} to finite weights >= 0, not all 0; "
                         f"got {t.dim_weights}" + (f" (unknown: {sorted(unknown)})" if unknown else ""))
    train_path, val_path = _prepare_data(cfg, out)
    train_m = load_manifest(train_path, dims, cfg.data.video_root)  # validated before any Ray work
    val_m = load_manifest(val_path, dims, cfg.data.video_root)
    if cfg.model.name_or_path is None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, name_or_path=str(make_tiny_backbone(out / "tiny_backbone", cfg.model.tiny,
                                                           cfg.model.tiny_seed))))
    else:  # absolute for the workers; "assets/tiny-qwen2vl" resolves from any working directory
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model,
                                                                 name_or_path=str(repo_path(cfg.model.name_or_path))))
    save_config(cfg, out)

    init_ray(cfg.address)
    configure_data_context(cfg.progress)
    train_ds = pair_dataset(train_m, cfg.data)
    val_ds = pair_dataset(val_m, cfg.data)
    cache_s = None
    if cfg.data.cache_frames:
        from ray.data import DataContext

        t0 = time.perf_counter()
        DataContext.get_current().execution_options.preserve_order = True  # same cached order on every run
        train_ds = train_ds.materialize()
        cache_s = round(time.perf_counter() - t0, 1)
        print(f"frame cache: {len(train_m)} training pairs decoded once into the object store in {cache_s} s "
              f"({train_ds.size_bytes() / 2 ** 20:.0f} MiB)", flush=True)
    per_worker = len(train_m) // t.num_workers
    steps_per_epoch = max(1, math.ceil(per_worker / t.batch_pairs))
    total_steps = steps_per_epoch * t.epochs
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps)
    print(f"training: {len(train_m)} pairs, {t.num_workers} workers x {t.batch_pairs} pairs/step, "
          f"{steps_per_epoch} steps/epoch, {total_steps} steps, ZeRO-{t.zero_stage}, loss {t.loss}", flush=True)
    progress, wall = fit_trainer(_train_fn, {"cfg": to_dict(cfg), "total_steps": total_steps}, t, out,
                                 "train-reward", {"train": train_ds, "val": val_ds})
    final = out / "final"
    save_config(cfg, final, "train_config.yaml")
    (final / "sampling.json").write_text(json.dumps(dataclasses.asdict(cfg.data.sampling)))
    curve = progress["curve"]
    (out / "learning_curve.json").write_text(json.dumps(curve, indent=2))
    plot_curve(curve, out / "learning_curve.png", dims)
    summary = {"final_checkpoint": str(final), "steps": progress["step"], "wall_s": round(wall, 1),
               "frame_cache_s": cache_s,
               "resumes": progress["resumes"], "val": curve[-1].get("val"), "worker_nodes": progress.get("nodes"),
               "pairs_per_s_per_worker": _mean(curve, "pairs_per_s_per_worker"),
               "data_wait_share": _mean(curve, "data_wait_share")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_summary(summary, dims)
    return summary


def _mean(curve, key):
    vals = [p[key] for p in curve if key in p]
    return round(sum(vals) / len(vals), 4) if vals else None


def _print_summary(summary: dict, dims: list[str]) -> None:
    print(f"\nfinal checkpoint: {summary['final_checkpoint']}  ({summary['steps']} steps, {summary['wall_s']} s)")
    print(f"{'dim':>5} {'acc(no ties)':>13} {'acc(ties)':>10} {'eps*':>8}")
    for dim in dims:
        v = (summary["val"] or {}).get(dim, {})
        print(f"{dim:>5} {v.get('acc_without_ties', float('nan')):13.3f} {v.get('acc_with_ties', float('nan')):10.3f}"
              f" {v.get('epsilon', float('nan')):8.3f}")


def _train_fn(config):
    from raypipe.train.reward_loop import train_loop_per_worker

    train_loop_per_worker(config)


def train_reward_from_args(config_path: str | None, out: str | None, overrides: list[str]) -> int:
    extra = [f"out={json.dumps(out)}"] if out else []
    cfg = load_config(RewardTrainConfig, config_path, list(overrides) + extra)
    run_train_reward(cfg)
    return 0
