"""Pieces every Ray Train job here shares: the trainer settings, the driver (`fit_trainer`), the DeepSpeed config,
rank agreement and the worker loop."""
from __future__ import annotations

import dataclasses

PLACEMENT = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclasses.dataclass
class TrainerSettings:
    """Fields every DeepSpeed trainer here has (train-reward, train-flow, train-latent-reward); each job's `train`
    section extends it and may change the defaults."""
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    # Ray placement of the workers' bundles: PACK fills a node first (NCCL inside a node); SPREAD / STRICT_SPREAD
    # put them on different nodes (STRICT: fails to start unless every worker gets its own node).
    placement_strategy: str = "PACK"
    zero_stage: int = 2  # DeepSpeed ZeRO stage: 0, 2 or 3
    lr: float = 2e-6
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    min_lr_ratio: float = 1.0  # 1.0: constant after warm-up
    grad_clip: float = 1.0
    epochs: int = 1
    max_steps: int | None = None  # stop earlier than epochs (time-boxed runs)
    max_minutes: float | None = None  # wall-clock training budget (summed over resumes); stops at the first step past it
    checkpoint_every: int = 100  # steps; also at the end
    keep_checkpoints: int = 2
    max_failures: int = 2  # worker deaths tolerated (resume from the last checkpoint)
    seed: int = 0
    record_rows: bool = False  # keep the consumed rows per epoch in the checkpoint's progress (resume checks)
    # Recompute activations in the backward pass: ~1/3 more compute for a fraction of the activation memory (the
    # real-size presets need it: their batches run out of an 80 GB GPU without it, see `raypipe bench gpu`).
    gradient_checkpointing: bool = False


def fit_trainer(loop, loop_config: dict, t: TrainerSettings, out, name: str, datasets: dict) -> tuple[dict, float]:
    """Run a `TorchTrainer` for one of our jobs and collect its result.

    Workers: `t.num_workers` x {CPU: t.cpus_per_worker} (+1 GPU each with `t.use_gpu`), placed by
    `t.placement_strategy`; DS_ACCELERATOR reaches them through the run's runtime env. Checkpoints go to
    OUT/ray_results/NAME (on a cluster OUT must be on a filesystem every node sees); a dead worker restarts the
    group from the last checkpoint up to `t.max_failures` times. Every dataset is streamed in the same order on
    every run (preserve_order), so a restarted worker skips exactly what it had consumed. Returns (the final
    checkpoint's progress.json, wall seconds) after copying its `final/` folder to OUT/final."""
    import json
    import shutil
    import time
    from pathlib import Path

    import ray.train
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raypipe.config import ConfigError

    if t.placement_strategy not in PLACEMENT:
        raise ConfigError(f"train.placement_strategy must be one of {PLACEMENT}, got {t.placement_strategy!r}")
    out = Path(out)
    env = {"DS_ACCELERATOR": "cuda" if t.use_gpu else "cpu", "RAY_AUTH_MODE": "disabled"}
    trainer = TorchTrainer(
        train_loop_per_worker=loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker},
                                     placement_strategy=t.placement_strategy),
        run_config=RunConfig(name=name, storage_path=str(out / "ray_results"),
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
                             worker_runtime_env={"env_vars": env}),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
    )
    start = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - start
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as d:
        progress = json.loads((Path(d) / "progress.json").read_text())
        if (out / "final").exists():
            shutil.rmtree(out / "final")
        shutil.copytree(Path(d) / "final", out / "final")
    return progress, wall


def worker_nodes() -> list[dict]:
    """Per rank (all ranks call it): the Ray node id and host of its worker, gathered from every rank."""
    import socket

    import ray
    import torch.distributed as dist

    me = {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, me)
    return everyone


def deepspeed_config(t, total_steps: int, bf16: bool, micro_batch: int) -> dict:
    """DeepSpeed config from a train settings section (zero_stage, lr, weight_decay, warmup_ratio, min_lr_ratio,
    grad_clip): AdamW (torch implementation) + warm-up/cosine schedule."""
    warmup = max(1, int(t.warmup_ratio * total_steps))
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": bf16},
        # torch_adam: a compiled FusedAdam is the default for "AdamW" and needs a CUDA toolchain.
        "optimizer": {"type": "AdamW", "params": {"lr": t.lr, "betas": [0.9, 0.999], "eps": 1e-8,
                                                  "weight_decay": t.weight_decay, "torch_adam": True}},
        "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": max(total_steps, warmup + 1),
                                                          "warmup_num_steps": warmup,
                                                          "cos_min_ratio": t.min_lr_ratio}},
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }


def all_ranks_true(flag: bool) -> bool:
    """True on every rank iff `flag` is true on every rank (one all-reduce), so all ranks take the same branch."""
    import torch
    import torch.distributed as dist

    # NCCL reduces only GPU tensors; gloo only CPU ones.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([0 if flag else 1], device=device)
    dist.all_reduce(t)
    return int(t.item()) == 0


def without_errors(batch):
    """(rows of a pyarrow batch whose `error` is null, number dropped)."""
    import pyarrow.compute as pc

    if "error" not in batch.column_names:
        return batch, 0
    bad = pc.is_valid(batch.column("error"))
    n_bad = int(pc.sum(bad).as_py() or 0)
    return (batch.filter(pc.invert(bad)), n_bad) if n_bad else (batch, 0)


def worker_loop(engine, t, total_steps: int, step_fn, save_final, tensorboard_dir: str | None = None) -> None:
    """The Ray Train worker loop every DeepSpeed job here shares (train-flow, train-latent-reward).

    Per step: a batch of `t.batch` rows from this worker's "train" shard, error rows dropped (counted) ->
    `step_fn(batch, generator) -> (loss, stats)` -> a finite check agreed by all ranks -> engine.backward/step.
    Every `t.log_every` steps a curve point (loss, stats, items/s, lr, train_s) goes to progress and, on rank 0,
    to TensorBoard; every `t.checkpoint_every` steps and at the end a checkpoint (DeepSpeed state of every rank,
    rank 0's progress.json, and at the end `save_final(dir / "final")` on rank 0) is reported. After a restart
    the DeepSpeed state and progress come back and the batches of the current epoch already consumed are
    skipped. `t.max_minutes` stops early (all ranks agree); `t.record_rows` keeps the consumed rows' first uri."""
    import json
    import tempfile
    import time
    from pathlib import Path

    import ray.train
    import torch

    rank = ray.train.get_context().get_world_rank()
    progress = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "curve": [], "resumes": [], "train_s": 0.0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(d, tag="ds")
            progress = json.loads((Path(d) / "progress.json").read_text())
        progress["resumes"].append({"at_step": progress["step"], "engine_global_steps": engine.global_steps})
    progress["nodes"] = worker_nodes()  # where this attempt's ranks run (multi-node placement checks)
    writer = None
    if rank == 0 and tensorboard_dir:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(tensorboard_dir)
    generator = torch.Generator().manual_seed(t.seed * 1000 + rank * 7919 + progress["step"])

    def report(point: dict, final: bool) -> None:
        with tempfile.TemporaryDirectory() as d:
            engine.save_checkpoint(d, tag="ds")
            if rank == 0:
                if final:
                    save_final(Path(d) / "final")
                (Path(d) / "progress.json").write_text(json.dumps(progress))
            ray.train.report({"step": point["step"], "final": final, "loss": point.get("loss")},
                             checkpoint=ray.train.Checkpoint.from_directory(d))

    shard = ray.train.get_dataset_shard("train")
    step, done = progress["step"], progress["step"] >= total_steps
    attempt_t0, spent_before = time.perf_counter(), float(progress.get("train_s", 0.0))
    budget_s = 60.0 * t.max_minutes if t.max_minutes else None
    window = {"loss": 0.0, "n": 0, "stats": {}, "t0": time.perf_counter(), "items": 0}
    for epoch in range(progress["epoch"], t.epochs):
        if done:
            break
        skip = progress["batch_in_epoch"] if epoch == progress["epoch"] else 0
        shard_iter = shard.iter_batches(batch_size=t.batch, batch_format="pyarrow", drop_last=True,
                                        local_shuffle_buffer_size=None)
        for index, batch in enumerate(shard_iter):
            if index < skip:
                continue
            engine.train()
            if getattr(t, "record_rows", False):
                key = next(k for k in ("uri_w", "uri_A", "uri") if k in batch.column_names)
                progress.setdefault("rows", {}).setdefault(str(epoch), []).extend(batch.column(key).to_pylist())
            batch, n_bad = without_errors(batch)
            progress["error_rows"] = progress.get("error_rows", 0) + n_bad
            if batch.num_rows:
                loss, stats = step_fn(batch, generator)
            else:  # every row failed to decode: a zero-gradient step keeps the ranks in lockstep
                loss = sum(p.sum() for p in engine.module.parameters() if p.requires_grad) * 0.0
                stats = {}
            if not all_ranks_true(bool(torch.isfinite(loss))):
                raise RuntimeError(f"non-finite loss at step {step + 1} (epoch {epoch}, batch {index}); no "
                                   f"checkpoint is written. Lower train.lr or check the data.")
            engine.backward(loss)
            engine.step()
            step += 1
            window["loss"] += float(loss.detach())
            window["n"] += 1
            window["items"] += batch.num_rows
            for k, v in stats.items():
                window["stats"][k] = window["stats"].get(k, 0.0) + v
            train_s = spent_before + time.perf_counter() - attempt_t0
            out_of_time = budget_s is not None and not all_ranks_true(train_s < budget_s)
            last = step >= total_steps or out_of_time
            if step % t.log_every == 0 or step % t.checkpoint_every == 0 or last:
                elapsed = max(time.perf_counter() - window["t0"], 1e-9)
                point = {"step": step, "epoch": epoch, "loss": window["loss"] / window["n"],
                         "items_per_s_per_worker": window["items"] / elapsed, "lr": engine.get_lr()[0],
                         "train_s": round(train_s, 1),
                         **{k: v / window["n"] for k, v in window["stats"].items()}}
                progress["curve"].append(point)
                if writer is not None:
                    for k, v in point.items():
                        if k not in ("step", "epoch"):
                            writer.add_scalar(f"train/{k}", v, step)
                    writer.flush()
                window = {"loss": 0.0, "n": 0, "stats": {}, "t0": time.perf_counter(), "items": 0}
                progress.update(step=step, epoch=epoch, batch_in_epoch=index + 1, train_s=train_s)
                if step % t.checkpoint_every == 0 or last:
                    report(point, last)
            if last:
                done = True
                break
    if not done:
        report({"step": step}, True)
    if writer is not None:
        writer.close()
