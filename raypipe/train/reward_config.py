"""Config of `raypipe train-reward` (one typed tree; YAML + key=value overrides)."""
from __future__ import annotations

import dataclasses

from raypipe.config import DataConfig, SamplingConfig, SynthConfig
from raypipe.reward.model import RewardModelConfig


@dataclasses.dataclass
class TrainSettings:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    zero_stage: int = 2  # DeepSpeed ZeRO stage: 0, 2 or 3
    loss: str = "btt"  # bt | btt | regression
    theta: float = 5.0  # BTT tie parameter (> 1)
    lr: float = 2e-6
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    batch_pairs: int = 8  # pairs per worker per step
    epochs: int = 2
    max_steps: int | None = None  # stop earlier than epochs (time-boxed runs)
    max_minutes: float | None = None  # wall-clock training budget (summed over resumes); stops at the first step past it
    checkpoint_every: int = 100  # steps; also at the end
    eval_every: int = 100  # steps between validation accuracy points of the learning curve
    keep_checkpoints: int = 2
    max_failures: int = 2  # worker deaths tolerated (resume from the last checkpoint)
    seed: int = 0
    prefetch_batches: int = 4
    shuffle_buffer: int = 64  # local shuffle (rows) in each worker
    record_rows: bool = False  # keep rank 0's consumed row_ids per epoch in the checkpoint (resume checks)


@dataclasses.dataclass
class RewardTrainConfig:
    model: RewardModelConfig = dataclasses.field(default_factory=RewardModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)  # data.manifest: the training pairs
    val_manifest: str | None = None  # held-out pairs: learning curve, norm stats (SPEC §3.3)
    synth_train: SynthConfig = dataclasses.field(default_factory=lambda: SynthConfig(pairs=2048, seed=1))
    synth_val: SynthConfig = dataclasses.field(default_factory=lambda: SynthConfig(pairs=256, seed=2))
    train: TrainSettings = dataclasses.field(default_factory=TrainSettings)
    out: str = "reward-out"
    address: str | None = None
    progress: bool = True


def tiny_sampling() -> SamplingConfig:
    return SamplingConfig(fps=4.0, max_frames=16)
