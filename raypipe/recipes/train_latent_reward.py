"""`raypipe train-latent-reward`: the noise-aware latent reward model of Flow-NRG on Ray Train (SPEC §6.1).

    raypipe train-latent-reward --config configs/latent_reward_tiny.yaml --out lr-out

1. Pairs from a preference manifest (labels y_<DIM>) or `raypipe relabel` output (`model_<DIM>` = A/B/same, the
   reward model's labels) — with no manifest the tiny preset synthesises SynthPref; a validation share is held out
   by row_id.
2. The latent cache (Ray Data decode tasks + VAE/text-encoder actors, `raypipe.distributed.latents`): latents_A,
   latents_B and the prompt's text embedding per pair, written once to OUT/latents/{train,val}.
3. Ray Train workers with a DeepSpeed engine over `LatentReward` (first K generator blocks + heads): per pair ONE
   eps and ONE t (uniform on [0, 1], or t = 0 for the clean-latent ablation `train.noise=clean`), both latents
   noised with them, BT/BTT loss on r(x_t^A) − r(x_t^B) with per-dimension label masks. Checkpoints and resume
   as every other job (`raypipe.distributed.loop`).
4. Evaluation on the held-out pairs: accuracy per dimension per t bucket ([0,.25), [.25,.5), [.5,.75), [.75,1])
   -> OUT/metrics.json (+ a plot), the model in OUT/final (`LatentReward.from_pretrained`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from raypipe.config import ClipConfig, ConfigError, SynthConfig, build_config, save_config, to_dict
from raypipe.data.inputs import read_pair_table
from raypipe.data.location import StagedOutput
from raypipe.distributed.cluster import configure_data_context, init_ray
from raypipe.distributed.latents import cached_latents
from raypipe.distributed.loop import (
    TrainClock,
    Window,
    drop_error_rows,
    noise_generator,
    record_point,
    record_rows,
    require_finite,
    resume,
    save_and_report,
    tensorboard_writer,
    throughput_point,
    unconsumed,
    world_rank,
    zero_loss,
)
from raypipe.distributed.trainer import TrainerSettings, deepspeed_engine, fit_trainer, require_one_step, step_count
from raypipe.flow.families import FAMILIES, load_family, make_tiny_generator, takes_image
from raypipe.flow.wan_build import TinyWanConfig
from raypipe.nrg.model import TRAINABLE, LatentReward, needs_generator
from raypipe.nrg.training import NOISE, batch_pair_loss, bucket_accuracy, pair_labels, split_rows
from raypipe.video.synth import manifest_or_synthpref


@dataclasses.dataclass
class LatentRewardSettings(TrainerSettings):
    """train-latent-reward's `train` section: the shared trainer fields (raypipe.distributed.trainer) + these."""

    cpus_per_worker: float = 0.5  # CPUs reserved per training worker
    zero_stage: int = 0
    lr: float = 3e-4  # peak learning rate
    batch: int = 16  # pairs per worker per step
    epochs: int = 10  # passes over the training rows
    log_every: int = 10  # steps between curve points (loss, stats, throughput)
    loss: str = "btt"  # bt | btt
    theta: float = 5.0  # BTT tie parameter (> 1)
    noise: str = "uniform"  # uniform: t ~ U[0, 1] (noise-aware); clean: t = 0 (the paper's weaker ablation)


@dataclasses.dataclass
class LatentDataConfig:
    """train-latent-reward's `data` section (train-flow's names for the same things)."""

    manifest: str | None = None  # preference manifest or relabel output (a folder or part file); None: SynthPref
    labels: str = "auto"  # auto | manifest (y_<DIM>) | model (relabel's model_<DIM>)
    video_root: str | None = None  # relative video paths resolve against this (default: the manifest's folder)
    val_fraction: float = 0.15  # share of pairs held out (by row_id)
    latent_cache: str = "latents"  # folder of the latent cache, relative to OUT unless absolute
    # image-to-video (Wan2.1 I2V, Wan2.2 TI2V / I2V-A14B): none | first_frame = video A's first frame conditions
    # both videos of a pair (SynthPref with synth.i2v=true: both start on it)
    image: str = "none"


@dataclasses.dataclass
class LatentRewardConfig:
    generator: str | None = None  # the pipeline folder of the generator guidance steers (any family); None: tiny
    family: str = "wan"  # the tiny random generator's family when generator is null (wan, ltx, hunyuan, ...)
    tiny: TinyWanConfig = dataclasses.field(default_factory=TinyWanConfig)  # the tiny Wan's shape
    dims: list[str] = dataclasses.field(default_factory=lambda: ["VQ", "MQ", "TA"])  # reward dimensions (heads)
    k_blocks: int = 2  # generator transformer blocks in the trunk
    trainable: str = "all"  # all | blocks | heads
    dtype: str = "float32"  # bfloat16 on GPUs (train.use_gpu): the trunk's weights and DeepSpeed's bf16 mode
    data: LatentDataConfig = dataclasses.field(default_factory=LatentDataConfig)
    clip: ClipConfig = dataclasses.field(default_factory=ClipConfig)
    synth: SynthConfig = dataclasses.field(default_factory=lambda: SynthConfig(pairs=512, seed=31))
    train: LatentRewardSettings = dataclasses.field(default_factory=LatentRewardSettings)
    eval_draws: int = 4  # noise draws per held-out pair and t bucket
    out: str = "latent-reward-out"  # output folder, or an object-store prefix (s3://bucket/run)
    address: str | None = None  # Ray cluster address; null: RAY_ADDRESS or a new local Ray
    progress: bool = True  # progress bars


# --- the worker loop -----------------------------------------------------------------------------------------------
def train_func(config: dict) -> None:
    import ray.train

    cfg = build_config(LatentRewardConfig, config["cfg"])
    t, total_steps = cfg.train, config["total_steps"]
    torch.manual_seed(t.seed)
    gen = load_family(cfg.generator, dtype=cfg.dtype)
    model = LatentReward.for_family(gen, tuple(cfg.dims), cfg.k_blocks, cfg.trainable)
    model.gradient_checkpointing = t.gradient_checkpointing
    del gen
    engine = deepspeed_engine(model, t, total_steps, bf16=t.use_gpu and cfg.dtype == "bfloat16")
    final = lambda d: save_final(engine, cfg, d)  # OUT/final, written with the last report
    progress = resume(engine)
    writer = tensorboard_writer(config.get("tensorboard_dir"))
    generator = noise_generator(t.seed, progress)
    shard = ray.train.get_dataset_shard("train")
    clock, window, step = TrainClock(progress, t.max_minutes), Window(), progress["step"]
    last = step >= total_steps
    for epoch in range(progress["epoch"], t.epochs):
        if last:
            break
        batches = shard.iter_batches(
            batch_size=t.batch, batch_format="pyarrow", drop_last=True, local_shuffle_buffer_size=None
        )
        for index, batch, _ in unconsumed(batches, progress, epoch):
            engine.train()
            if t.record_rows:
                record_rows(progress, epoch, batch, ("uri_w", "uri_A", "uri"))
            batch = drop_error_rows(batch, progress)
            if batch.num_rows:
                loss, stats = batch_pair_loss(engine, t, batch, cfg.dims, generator)
            else:  # every row failed: a zero step keeps the ranks in lockstep
                loss, stats = zero_loss(engine.module), {}
            require_finite(loss, step, epoch, index)
            engine.backward(loss)
            engine.step()
            step += 1
            window.step(loss=float(loss.detach()), items=batch.num_rows, **stats)
            last = step >= total_steps or clock.out_of_time()
            if step % t.log_every == 0 or step % t.checkpoint_every == 0 or last:
                train_s = clock.train_s()
                point = throughput_point(window, step, epoch, engine, train_s)
                record_point(progress, point, index, train_s, writer)
                window = Window()
                if step % t.checkpoint_every == 0 or last:
                    save_and_report(engine, progress, {"step": step, "loss": point["loss"]}, final if last else None)
            if last:
                break
    if not last:  # data ran out before total_steps: a final report so the job has a result
        save_and_report(engine, progress, {"step": step, "loss": None}, final)
    if writer is not None:
        writer.close()


def save_final(engine, cfg: LatentRewardConfig, d: Path) -> None:
    """OUT/final on rank 0: `LatentReward.from_pretrained` loads it."""
    if world_rank() == 0:
        engine.module.save_pretrained(
            d, extra={"generator": cfg.generator, "noise": cfg.train.noise, "loss": cfg.train.loss}
        )


def plot_bucket_accuracy(metrics: dict, dims: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    for d in dims:
        keys = list(metrics[d])
        ax.plot(
            range(len(keys)), [np.nan if metrics[d][k] is None else metrics[d][k] for k in keys], marker="o", label=d
        )
        ax.set_xticks(range(len(keys)), keys)
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set_xlabel("t bucket (1 = pure noise)")
    ax.set_ylabel("pairwise accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- the job -------------------------------------------------------------------------------------------------------
def _cached(rows: pa.Table, cfg: LatentRewardConfig, path: Path, key: dict):
    """Latents of both videos of every pair (the shared latent cache, keys A and B)."""
    image = "A" if cfg.data.image == "first_frame" else None
    if image:
        key = {**key, "image": cfg.data.image}
    return cached_latents(rows, cfg.generator, cfg.clip, {"uri_A": "A", "uri_B": "B"}, path, key, image)


def run(cfg: LatentRewardConfig) -> dict:
    t = cfg.train
    _check(cfg)
    stage = StagedOutput(cfg.out)  # a local folder, or staged locally and published to an object store
    out = stage.dir
    if cfg.generator is None:
        tiny = cfg.tiny if cfg.family == "wan" else None
        path = make_tiny_generator(cfg.family, out / f"tiny_{cfg.family}", tiny, 0)
        cfg = dataclasses.replace(cfg, generator=str(path))
    if cfg.data.image != "none" and not takes_image(cfg.generator):
        raise ConfigError(
            f"data.image={cfg.data.image} needs an image-to-video generator (Wan I2V / TI2V, LTX-Video); "
            f"{cfg.generator} is text-to-video only"
        )
    manifest = manifest_or_synthpref(cfg.data.manifest, out / "data", cfg.synth, "data.manifest", cfg.progress)
    rows, source = pair_labels(
        read_pair_table(manifest, cfg.dims, cfg.data.video_root), list(cfg.dims), cfg.data.labels
    )
    train_rows, val_rows = split_rows(rows, cfg.data.val_fraction, t.seed)
    require_one_step(train_rows.num_rows, t, "training pairs")
    save_config(cfg, out)
    init_ray(cfg.address)
    configure_data_context(cfg.progress)
    cache = Path(cfg.data.latent_cache) if Path(cfg.data.latent_cache).is_absolute() else out / cfg.data.latent_cache
    key = {
        "manifest": str(manifest),
        "generator": cfg.generator,
        "clip": dataclasses.asdict(cfg.clip),
        "labels": source,
        "val_fraction": cfg.data.val_fraction,
        "seed": t.seed,
    }
    t0 = time.perf_counter()
    ds = _cached(train_rows, cfg, cache / "train", key | {"split": "train", "rows": train_rows.num_rows})
    if val_rows.num_rows:
        _cached(val_rows, cfg, cache / "val", key | {"split": "val", "rows": val_rows.num_rows})
    cache_s = time.perf_counter() - t0
    _, total_steps = step_count(train_rows.num_rows, t, t.batch, drop_last=True)
    print(
        f"train-latent-reward: {train_rows.num_rows} train / {val_rows.num_rows} val pairs ({source} labels), "
        f"K={cfg.k_blocks}, noise={t.noise}, {t.num_workers} workers x {t.batch}, {total_steps} steps",
        flush=True,
    )
    loop_config = {"cfg": to_dict(cfg), "total_steps": total_steps, "tensorboard_dir": str(out / "tensorboard")}
    progress, wall = fit_trainer(train_func, loop_config, t, out, "train-latent-reward", {"train": ds}, stage.storage)
    (out / "curve.json").write_text(json.dumps(progress["curve"], indent=2))
    metrics = _held_out_accuracy(cfg, out, cache / "val") if val_rows.num_rows else {}
    sizes = {
        "train_pairs": train_rows.num_rows,
        "val_pairs": val_rows.num_rows,
        "labels": source,
        "cache_s": round(cache_s, 1),
    }
    summary = _write_summary(cfg, out, progress, wall, sizes, metrics, stage.uri_of("final"))
    stage.publish()
    return summary


def _write_summary(
    cfg: LatentRewardConfig, out: Path, progress: dict, wall: float, sizes: dict, metrics: dict, final: str
) -> dict:
    summary = {
        "steps": progress["step"],
        **sizes,
        "noise": cfg.train.noise,
        "k_blocks": cfg.k_blocks,
        "train_wall_s": round(wall, 1),
        "error_rows": progress.get("error_rows", 0),
        "resumes": progress["resumes"],
        "last": progress["curve"][-1] if progress["curve"] else {},
        "worker_nodes": progress.get("nodes"),
        "val_accuracy_by_t": metrics,
        "final": final,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"train-latent-reward: {summary['steps']} steps in {summary['train_wall_s']} s; held-out accuracy by t: "
        f"{json.dumps({d: metrics.get(d) for d in cfg.dims})}; model in {out / 'final'}",
        flush=True,
    )
    return summary


def _check(cfg: LatentRewardConfig) -> None:
    """Refuse unknown choices before any work."""
    t = cfg.train
    if t.noise not in NOISE:
        raise ConfigError(f"train.noise must be one of {NOISE}, got {t.noise!r}")
    if cfg.trainable not in TRAINABLE:
        raise ConfigError(f"trainable must be one of {TRAINABLE}, got {cfg.trainable!r}")
    if t.loss not in ("bt", "btt"):
        raise ConfigError(f"train.loss must be bt or btt, got {t.loss!r}")
    if cfg.family not in FAMILIES:
        raise ConfigError(f"family must be one of {sorted(FAMILIES)} (the tiny generator's), got {cfg.family!r}")
    if cfg.data.image not in ("none", "first_frame"):
        raise ConfigError(f"data.image must be none or first_frame (image-to-video), got {cfg.data.image!r}")


def _held_out_accuracy(cfg: LatentRewardConfig, out: Path, val_cache: Path) -> dict:
    """Accuracy per dimension per t bucket of OUT/final on the held-out latents (+ OUT/accuracy_by_t.png)."""
    import pyarrow.parquet as pq

    final = out / "final"
    model = LatentReward.from_pretrained(
        final, generator=load_family(cfg.generator, quiet=not cfg.progress) if needs_generator(final) else None
    )
    metrics = bucket_accuracy(
        model, pq.read_table(str(val_cache)), list(cfg.dims), cfg.eval_draws, seed=cfg.train.seed + 1
    )
    plot_bucket_accuracy(metrics, list(cfg.dims), out / "accuracy_by_t.png")
    return metrics
