"""`raypipe train-reward`: VideoReward on Ray Train + DeepSpeed, decoded pairs streamed by Ray Data.

    raypipe train-reward --config configs/reward_tiny.yaml --out reward-out [key=value ...]

Driver (`run`): resolve data (a seeded SynthPref train/val pair of sets when the config names no manifest), write
the tiny backbone if no real one is given, build the streaming decoded-pair datasets, run the TorchTrainer, then
copy the final checkpoint to OUT/final and write the learning curve (JSON + PNG).

Workers (`train_func`): batch of decoded pairs -> processor -> rewards of A and B in one forward -> BT/BTT loss
(masked per dimension) -> engine.backward/step; every `eval_every` steps a validation point of the curve and a
checkpoint (DeepSpeed state + progress); a restarted group resumes at the batch it had reached.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from raypipe.config import ConfigError, DataConfig, SynthConfig, build_config, repo_path, save_config, to_dict
from raypipe.data.location import StagedOutput
from raypipe.data.manifest import load_manifest
from raypipe.distributed.cluster import configure_data_context, init_ray, materialize_in_order
from raypipe.distributed.decode import pair_dataset
from raypipe.distributed.loop import (
    TrainClock,
    Window,
    record_point,
    record_rows,
    require_finite,
    resume,
    save_and_report,
    unconsumed,
    world_rank,
)
from raypipe.distributed.trainer import TrainerSettings, deepspeed_engine, fit_trainer, step_count
from raypipe.reward.backbone import make_tiny_backbone
from raypipe.reward.model import RewardModelConfig, VideoReward
from raypipe.reward.scoring import TIE_EPSILON_FILE, compute_norm_stats
from raypipe.reward.training import batch_loss, init_conventions, model_from_init, pairs_to_inputs, validation_metrics
from raypipe.video.synth import manifest_or_synthpref


# --- config ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainSettings(TrainerSettings):
    """train-reward's `train` section: the shared trainer fields (distributed.trainer.TrainerSettings) + these."""

    loss: str = "btt"  # bt | btt | regression
    theta: float = 5.0  # BTT tie parameter (> 1)
    # Loss weight per dimension (unnamed dimensions weigh 1; {} = the plain masked mean of SPEC §3.2), e.g. {TA: 3}
    # to give a slow dimension a larger share of the update.
    dim_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    warmup_ratio: float = 0.05  # share of the steps spent warming the learning rate up
    min_lr_ratio: float = 0.1
    batch: int = 8  # pairs per worker per step
    epochs: int = 2  # passes over the training rows
    eval_every: int = 100  # steps between validation accuracy points of the learning curve
    prefetch_batches: int = 4  # batches prefetched per worker
    shuffle_buffer: int = 64  # local shuffle (rows) in each worker


@dataclasses.dataclass
class RewardDataConfig(DataConfig):
    """train-reward's `data` section: the shared manifest/decoding fields + the frame cache."""

    # Decode every video once into Ray's object store before training, and stream the decoded frames each epoch
    # (spills to local disk beyond the store). For sets that fit (SynthPref: 75 KB per video): a 56x56 video costs
    # ~9 ms of CPU to decode, as much as a tiny model's training step on it. Off for large sets.
    cache_frames: bool = False


@dataclasses.dataclass
class RewardTrainConfig:
    model: RewardModelConfig = dataclasses.field(default_factory=RewardModelConfig)
    data: RewardDataConfig = dataclasses.field(default_factory=RewardDataConfig)  # data.manifest: training pairs
    val_manifest: str | None = None  # held-out pairs: learning curve, norm stats (SPEC §3.3)
    synth_train: SynthConfig = dataclasses.field(default_factory=lambda: SynthConfig(pairs=2048, seed=1))
    synth_val: SynthConfig = dataclasses.field(default_factory=lambda: SynthConfig(pairs=256, seed=2))
    train: TrainSettings = dataclasses.field(default_factory=TrainSettings)
    out: str = "reward-out"  # output folder, or an object-store prefix (s3://bucket/run; checkpoints kept there)
    address: str | None = None  # Ray cluster address; null: RAY_ADDRESS or a new local Ray
    progress: bool = True  # progress bars
    # continue from a VideoReward checkpoint (ours or the released layout), keeping its conventions and sampling
    init_from: str | None = None
    base: str | None = None  # base model folder for a released-layout init_from (default: its model_name_or_path)
    # the official prompt_template.py (or a text file) for the videoalign template; default $RAYPIPE_VIDEOALIGN_TEMPLATE
    template_file: str | None = None


# --- the driver -------------------------------------------------------------------------------------------------
def _prepare_data(cfg: RewardTrainConfig, out: Path) -> tuple[str, str]:
    train = manifest_or_synthpref(
        cfg.data.manifest, out / "data" / "train", cfg.synth_train, "data.manifest", cfg.progress
    )
    val = manifest_or_synthpref(cfg.val_manifest, out / "data" / "val", cfg.synth_val, "val_manifest", cfg.progress)
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


def run(cfg: RewardTrainConfig) -> dict:
    stage = StagedOutput(cfg.out)  # a local folder, or staged locally and published to an object store
    out = stage.dir
    cfg = _adopt_init(cfg)
    t, dims = cfg.train, cfg.model.dimensions
    _check(cfg)
    train_path, val_path = _prepare_data(cfg, out)
    train_m = load_manifest(train_path, dims, cfg.data.video_root)  # validated before any Ray work
    val_m = load_manifest(val_path, dims, cfg.data.video_root)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=_backbone(cfg, out)))
    save_config(cfg, out)

    init_ray(cfg.address)
    configure_data_context(cfg.progress)
    train_ds, val_ds = pair_dataset(train_m, cfg.data), pair_dataset(val_m, cfg.data)
    cache_s = None
    if cfg.data.cache_frames:
        t0 = time.perf_counter()
        train_ds = materialize_in_order(train_ds)
        cache_s = round(time.perf_counter() - t0, 1)
        print(
            f"frame cache: {len(train_m)} training pairs decoded once into the object store in {cache_s} s "
            f"({train_ds.size_bytes() / 2**20:.0f} MiB)",
            flush=True,
        )
    steps_per_epoch, total_steps = step_count(len(train_m), t, t.batch, drop_last=False)
    print(
        f"training: {len(train_m)} pairs, {t.num_workers} workers x {t.batch} pairs/step, "
        f"{steps_per_epoch} steps/epoch, {total_steps} steps, ZeRO-{t.zero_stage}, loss {t.loss}",
        flush=True,
    )
    loop_config = {"cfg": to_dict(cfg), "total_steps": total_steps}
    progress, wall = fit_trainer(
        train_func, loop_config, t, out, "train-reward", {"train": train_ds, "val": val_ds}, stage.storage
    )
    final = out / "final"
    save_config(cfg, final, "train_config.yaml")
    (final / "sampling.json").write_text(json.dumps(dataclasses.asdict(cfg.data.sampling)))
    curve = progress["curve"]
    (out / "learning_curve.json").write_text(json.dumps(curve, indent=2))
    plot_curve(curve, out / "learning_curve.png", dims)
    summary = {
        "final_checkpoint": stage.uri_of("final"),
        "steps": progress["step"],
        "wall_s": round(wall, 1),
        "frame_cache_s": cache_s,
        "resumes": progress["resumes"],
        "val": curve[-1].get("val"),
        "worker_nodes": progress.get("nodes"),
        "pairs_per_s_per_worker": curve_mean(curve, "pairs_per_s_per_worker"),
        "data_wait_share": curve_mean(curve, "data_wait_share"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    stage.publish()
    _print_summary(summary, dims)
    return summary


def _check(cfg: RewardTrainConfig) -> None:
    """Refuse an unknown loss or bad per-dimension weights before any work."""
    t, dims = cfg.train, cfg.model.dimensions
    if t.loss not in ("bt", "btt", "regression"):
        raise ConfigError(f"train.loss must be bt, btt or regression (MOS_<side>_<DIM> columns), got {t.loss!r}")
    unknown = set(t.dim_weights) - set(dims)
    bad = [f"{d}={w}" for d, w in t.dim_weights.items() if not (isinstance(w, (int, float)) and 0 <= w < float("inf"))]
    if unknown or bad or (t.dim_weights and not any(t.dim_weights.get(d, 1.0) > 0 for d in dims)):
        raise ConfigError(
            f"train.dim_weights must map dimensions of {list(dims)} to finite weights >= 0, not all 0; "
            f"got {t.dim_weights}" + (f" (unknown: {sorted(unknown)})" if unknown else "")
        )


def _adopt_init(cfg: RewardTrainConfig) -> RewardTrainConfig:
    """With `init_from`: the checkpoint's conventions and sampling replace the configured ones (see
    `reward.training.init_conventions`); the template file is resolved in the driver for every worker."""
    try:
        model, sampling, template_file = init_conventions(cfg.model, cfg.init_from, cfg.base, cfg.template_file)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"init_from: {e}") from None
    init_from = str(Path(cfg.init_from).resolve()) if cfg.init_from else None
    data = dataclasses.replace(cfg.data, sampling=sampling) if sampling else cfg.data
    return dataclasses.replace(cfg, init_from=init_from, template_file=template_file, model=model, data=data)


def _backbone(cfg: RewardTrainConfig, out: Path) -> str:
    """The backbone folder the workers load: the configured one as an absolute path ("assets/tiny-qwen2vl" resolves
    from any working directory), or a tiny random Qwen2-VL written to OUT/tiny_backbone."""
    if cfg.model.name_or_path is None:
        return str(make_tiny_backbone(out / "tiny_backbone", cfg.model.tiny, cfg.model.tiny_seed))
    return str(repo_path(cfg.model.name_or_path))


def curve_mean(curve: list[dict], key: str) -> float | None:
    """The mean of `key` over the curve points that have it (None when none does)."""
    vals = [p[key] for p in curve if key in p]
    return round(sum(vals) / len(vals), 4) if vals else None


def _print_summary(summary: dict, dims: list[str]) -> None:
    print(f"\nfinal checkpoint: {summary['final_checkpoint']}  ({summary['steps']} steps, {summary['wall_s']} s)")
    print(f"{'dim':>5} {'acc(no ties)':>13} {'acc(ties)':>10} {'eps*':>8}")
    for dim in dims:
        v = (summary["val"] or {}).get(dim, {})
        print(
            f"{dim:>5} {v.get('acc_without_ties', float('nan')):13.3f} {v.get('acc_with_ties', float('nan')):10.3f}"
            f" {v.get('epsilon', float('nan')):8.3f}"
        )


# --- the worker loop -----------------------------------------------------------------------------------------
def train_func(config: dict) -> None:
    import ray.train

    cfg = build_config(RewardTrainConfig, config["cfg"])
    t, total_steps = cfg.train, config["total_steps"]
    torch.manual_seed(t.seed)  # identical init on every rank (DeepSpeed also broadcasts rank 0's weights)
    device = torch.device("cuda", torch.cuda.current_device()) if t.use_gpu else torch.device("cpu")
    model = _model(cfg)
    dims = model.dimensions
    weights = None if not t.dim_weights else torch.tensor([float(t.dim_weights.get(d, 1.0)) for d in dims])
    engine = deepspeed_engine(model, t, total_steps, bf16=t.use_gpu and cfg.model.dtype == "bfloat16")
    progress = resume(engine)
    val_batches = validation_batches(ray.train.get_dataset_shard("val"), model, dims, t.batch)
    shard = ray.train.get_dataset_shard("train")
    clock, window, step = TrainClock(progress, t.max_minutes), Window(), progress["step"]
    last = step >= total_steps
    for epoch in range(progress["epoch"], t.epochs):
        if last:
            break
        batches = shard.iter_batches(
            batch_size=t.batch,
            batch_format="pyarrow",
            prefetch_batches=t.prefetch_batches,
            local_shuffle_buffer_size=t.shuffle_buffer or None,
            local_shuffle_seed=t.seed * 1000 + epoch,
        )
        for index, batch, wait_s in unconsumed(batches, progress, epoch):
            times = {"wait": wait_s}
            t0 = time.perf_counter()
            inputs, targets, n_err = pairs_to_inputs(batch, model.processor, dims, with_mos=t.loss == "regression")
            if t.record_rows and world_rank() == 0:
                record_rows(progress, epoch, batch, ("row_id",))
            if inputs is None:  # every row of this batch failed to decode: a zero step keeps ranks in lockstep
                inputs, targets = empty_step_inputs(model, dims)
            t1 = time.perf_counter()
            rewards = engine(_to(inputs, device))
            loss, _ = batch_loss(t.loss, rewards, targets, t.theta, device, weights)
            require_finite(loss, step, epoch, index)
            t2 = time.perf_counter()
            engine.backward(loss)
            t3 = time.perf_counter()
            engine.step()
            times.update(prep=t1 - t0, forward=t2 - t1, backward=t3 - t2, optimizer=time.perf_counter() - t3)
            step += 1
            window.step(loss=float(loss.detach()), pairs=int(targets["y"].shape[0]), errors=n_err, **times)
            last = step >= total_steps or clock.out_of_time()
            if step % t.eval_every == 0 or step % t.checkpoint_every == 0 or last:
                train_s = clock.train_s()
                point = curve_point(window, step, epoch, engine.get_lr()[0], train_s)
                scores = _validate(engine, model, val_batches, dims, device, point)
                record_point(progress, point, index, train_s)
                window = Window()
                _checkpoint(engine, model, progress, point, last, scores, dims)
            if last:
                break
    if not last:  # data ran out before total_steps (short shards): a final report so the job has a result
        point = {"step": step}
        scores = _validate(engine, model, val_batches, dims, device, point)
        progress["curve"].append(point)
        _checkpoint(engine, model, progress, point, True, scores, dims)


def _model(cfg: RewardTrainConfig) -> VideoReward:
    if cfg.init_from:  # the checkpoint's weights and conventions, this run's trainable parts
        model = model_from_init(cfg.init_from, cfg.model, cfg.base, cfg.template_file)
    else:
        model = VideoReward.build(cfg.model, template_file=cfg.template_file)
    if cfg.train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def validation_batches(shard, model, dims, batch: int) -> list:
    """This rank's held-out pairs as model inputs, prepared once."""
    out = []
    for rows in shard.iter_batches(batch_size=batch, batch_format="pyarrow"):
        inputs, targets, _ = pairs_to_inputs(rows, model.processor, dims)
        if inputs is not None:
            out.append((inputs, targets))
    return out


def empty_step_inputs(model, dims) -> tuple[dict, dict]:
    """Inputs of a zero-loss step (two black clips, every label masked) for a batch whose every row failed."""
    inputs = model.processor([np.zeros((4, 56, 56, 3), np.uint8)] * 2, ["", ""])
    none = torch.zeros((1, len(dims)), dtype=bool)
    return inputs, {
        "y": none.long(),
        "mask": none,
        "mos": torch.zeros((2, len(dims))),
        "mos_mask": torch.zeros((2, len(dims)), dtype=bool),
    }


def curve_point(window: Window, step: int, epoch: int, lr: float, train_s: float) -> dict:
    """A learning-curve point from the counters since the last one (the eval and checkpoint are not counted)."""
    return {
        "step": step,
        "epoch": epoch,
        "loss": window.mean("loss"),
        "pairs_per_s_per_worker": window.rate("pairs"),
        "data_wait_share": window.rate("wait"),
        "error_rows": int(window.sums["errors"]),
        "time_share": {k: round(window.rate(k), 3) for k in ("wait", "prep", "forward", "backward", "optimizer")},
        "lr": lr,
        "train_s": round(train_s, 1),
    }


def _validate(engine, model, val_batches, dims, device, point: dict) -> np.ndarray:
    """Held-out metrics into `point["val"]`; returns the raw validation scores (for the norm stats)."""
    margins, labels, masks, scores = evaluate(engine, model, val_batches, dims, device)
    point["val"] = validation_metrics(margins, labels, masks, dims)
    return scores


def _checkpoint(engine, model, progress, point, final, scores, dims) -> None:
    metrics = {"step": point["step"], **{f"val_{k}_acc": v["acc_without_ties"] for k, v in point["val"].items()}}
    save = (lambda path: save_final(engine, model, path, scores, dims, point["val"])) if final else None
    save_and_report(engine, progress, metrics, save)


def save_final(engine, model, path, scores, dims, val=None) -> None:
    """The user-facing checkpoint (merged LoRA, head, config, SPEC §3.3 norm stats on the validation split, and
    the validation split's tie thresholds ε* per dimension, which relabel uses to emit `same`). Every rank calls
    it (ZeRO-3 gathers the weights); rank 0 writes."""
    import contextlib

    import deepspeed

    stage3 = engine.zero_optimization_stage() == 3
    params = list(model.parameters())
    ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if stage3 else contextlib.nullcontext()
    with ctx:
        if world_rank() == 0:
            stats = compute_norm_stats(np.asarray(scores).reshape(-1, len(dims)), dims)
            eps = {
                d: r["epsilon"]
                for d, r in (val or {}).items()
                if isinstance(r.get("epsilon"), float) and np.isfinite(r["epsilon"])
            }
            model.save_pretrained(path, norm_stats=stats, extra={TIE_EPSILON_FILE: eps} if eps else None)


def _to(inputs, device):
    return {k: v.to(device) for k, v in inputs.items()}


def evaluate(engine, model, val_batches, dimensions, device):
    """Margins and labels on this rank's validation shard, gathered from all ranks; plus raw scores."""
    import torch.distributed as dist

    engine.eval()
    margins, labels, masks, scores = [], [], [], []
    with torch.no_grad():
        for inputs, targets in val_batches:
            y, mask = targets["y"], targets["mask"]
            r = engine(_to(inputs, device)).float().cpu()
            n = y.shape[0]
            margins.append(r[:n] - r[n:])
            labels.append(y), masks.append(mask), scores.append(r)
    engine.train()
    local = [torch.cat(x).numpy() if x else np.zeros((0, len(dimensions))) for x in (margins, labels, masks, scores)]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return [np.concatenate([g[i] for g in gathered]) for i in range(4)]
