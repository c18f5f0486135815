"""The Ray Train driver every training recipe shares: its settings section, `fit_trainer`, the DeepSpeed config,
and where the ranks run. The steps inside a worker loop are `raypipe.distributed.loop`."""

from __future__ import annotations

import dataclasses

PLACEMENT = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclasses.dataclass
class TrainerSettings:
    """Fields every DeepSpeed trainer here has (train-reward, train-flow, train-latent-reward); each job's `train`
    section extends it and may change the defaults."""

    num_workers: int = 2  # Ray Train workers (one DeepSpeed rank each)
    use_gpu: bool = False  # one GPU per worker (NCCL, bf16 possible)
    cpus_per_worker: float = 1.0  # CPUs reserved per worker
    # Ray placement of the workers' bundles: PACK fills a node first (NCCL inside a node); SPREAD / STRICT_SPREAD
    # put them on different nodes (STRICT: fails to start unless every worker gets its own node).
    placement_strategy: str = "PACK"
    zero_stage: int = 2  # DeepSpeed ZeRO stage: 0, 2 or 3
    lr: float = 2e-6  # peak learning rate (AdamW)
    weight_decay: float = 0.0  # AdamW weight decay
    warmup_ratio: float = 0.0  # share of the steps spent warming the learning rate up
    min_lr_ratio: float = 1.0  # 1.0: constant after warm-up
    grad_clip: float = 1.0  # gradient norm clip
    epochs: int = 1  # passes over the training rows
    max_steps: int | None = None  # stop earlier than epochs (time-boxed runs)
    # wall-clock training budget (summed over resumes); stops at the first step past it
    max_minutes: float | None = None
    checkpoint_every: int = 100  # steps; also at the end
    keep_checkpoints: int = 2  # checkpoints kept on disk (the newest)
    max_failures: int = 2  # worker deaths tolerated (resume from the last checkpoint)
    batch: int = 4  # rows per worker per step: pairs (train-reward, Flow-DPO, latent reward) or videos
    seed: int = 0  # seed of weights init, noise and shuffling
    record_rows: bool = False  # keep the consumed rows per epoch in the checkpoint's progress (resume checks)
    # Recompute activations in the backward pass: ~1/3 more compute for a fraction of the activation memory (the
    # real-size presets need it: their batches run out of an 80 GB GPU without it, see `raypipe bench gpu`).
    gradient_checkpointing: bool = False


def fit_trainer(
    loop, loop_config: dict, t: TrainerSettings, out, name: str, datasets: dict, storage: str | None = None
) -> tuple[dict, float]:
    """Run a `TorchTrainer` for one of our jobs and collect its result.

    Workers: `t.num_workers` x {CPU: t.cpus_per_worker} (+1 GPU each with `t.use_gpu`), placed by
    `t.placement_strategy`; DS_ACCELERATOR reaches them through the run's runtime env. Checkpoints go to
    OUT/ray_results/NAME, or `storage`/NAME (an object-store URI: `data.location.StagedOutput`; on a cluster
    without one, OUT must be on a filesystem every node sees); a dead worker restarts the
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
    from raypipe.data.location import full_disk
    from raypipe.distributed.cluster import QUIET_ENV

    if t.placement_strategy not in PLACEMENT:
        raise ConfigError(f"train.placement_strategy must be one of {PLACEMENT}, got {t.placement_strategy!r}")
    out = Path(out)
    env = {"DS_ACCELERATOR": "cuda" if t.use_gpu else "cpu", "RAY_AUTH_MODE": "disabled", **QUIET_ENV}
    trainer = TorchTrainer(
        train_loop_per_worker=loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=t.num_workers,
            use_gpu=t.use_gpu,
            resources_per_worker={"CPU": t.cpus_per_worker},
            placement_strategy=t.placement_strategy,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage or str(out / "ray_results"),
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
            worker_runtime_env={"env_vars": env},
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # not its INFO narration
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
    )
    start = time.perf_counter()
    where = storage or str(out)
    try:
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        wall = time.perf_counter() - start
        with result.checkpoint.as_directory() as d:
            progress = json.loads((Path(d) / "progress.json").read_text())
            if (out / "final").exists():
                shutil.rmtree(out / "final")
            shutil.copytree(Path(d) / "final", out / "final")
    except Exception as e:  # a full disk anywhere in a worker's or our writes is one line, not a Ray traceback
        full = full_disk(e, where)
        if full is None:
            raise
        raise full from None
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


def deepspeed_config(t, total_steps: int, bf16: bool, micro_batch: int | None = None) -> dict:
    """DeepSpeed config from a train settings section (batch, zero_stage, lr, weight_decay, warmup_ratio,
    min_lr_ratio, grad_clip): AdamW (torch implementation) + warm-up/cosine schedule; `micro_batch` defaults to
    `t.batch`."""
    warmup = max(1, int(t.warmup_ratio * total_steps))
    return {
        "train_micro_batch_size_per_gpu": micro_batch or t.batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": bf16},
        # torch_adam: a compiled FusedAdam is the default for "AdamW" and needs a CUDA toolchain.
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": t.lr,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "weight_decay": t.weight_decay,
                "torch_adam": True,
            },
        },
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": max(total_steps, warmup + 1),
                "warmup_num_steps": warmup,
                "cos_min_ratio": t.min_lr_ratio,
            },
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def step_count(rows: int, t: TrainerSettings, batch: int, drop_last: bool) -> tuple[int, int]:
    """(steps per epoch, total steps) for `rows` training rows over `t.num_workers` workers of `batch` rows.

    Each worker gets rows // num_workers rows; with `drop_last` (fixed-shape generator batches) a partial batch
    is not a step, without it (reward pairs) it is. `t.max_steps` caps the total."""
    per_worker = rows // max(1, t.num_workers)
    per_epoch = max(1, per_worker // batch if drop_last else -(-per_worker // batch))
    total = per_epoch * t.epochs
    return per_epoch, total if t.max_steps is None else min(total, t.max_steps)


def deepspeed_engine(model, t: TrainerSettings, total_steps: int, bf16: bool):
    """This rank's DeepSpeed engine over `model`'s trainable parameters (NCCL with GPUs, gloo without), with
    `deepspeed_config`'s optimizer and schedule and `t.batch` rows per step; torch threads = OMP_NUM_THREADS."""
    import logging
    import os

    import deepspeed
    import torch

    from raypipe.distributed.cluster import quiet_logs

    quiet_logs()  # again, now that Ray Train has configured this worker's loggers
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)  # its import set it to INFO
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    no_shm_op_build()
    deepspeed.init_distributed(dist_backend="nccl" if t.use_gpu else "gloo")
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(t, total_steps, bf16=bf16),
    )
    return engine


def no_shm_op_build() -> None:
    """DeepSpeed's CPU communication backend JIT-compiles a shared-memory all-reduce op (`build_shm_op`) in every
    process it sets up, under a file lock in ~/.cache/torch_extensions: a process killed while holding that lock
    (a killed job, a preempted worker) leaves it behind and every later DeepSpeed start on the machine waits on it
    forever. The op is only a CPU fast path (GPU ranks use NCCL; without it DeepSpeed all-reduces through
    torch.distributed, the same numbers), so it is not built at all: no compile, no lock, no "built successfully"
    line."""
    import importlib

    ds_torch = importlib.import_module("deepspeed.comm.torch")  # `deepspeed.comm.torch` as an attribute is torch
    if getattr(ds_torch.build_shm_op, "_raypipe_off", False):
        return

    def no_shm_op():
        return None

    no_shm_op._raypipe_off = True
    ds_torch.build_shm_op = no_shm_op


def require_one_step(rows: int, t: TrainerSettings, what: str = "training rows", detail: str = "") -> None:
    """ConfigError before any Ray work when `rows` cannot fill one step of `t.num_workers` x `t.batch`."""
    from raypipe.config import ConfigError

    if rows < t.num_workers * t.batch:
        raise ConfigError(f"{rows} {what}{detail} are fewer than one step needs ({t.num_workers} workers x {t.batch})")
