"""Config of `raypipe train-reward` (one typed tree; YAML + key=value overrides)."""
from __future__ import annotations

import dataclasses

from raypipe.config import DataConfig, SamplingConfig, SynthConfig
from raypipe.reward.model import RewardModelConfig
from raypipe.train.common import TrainerSettings


@dataclasses.dataclass
class TrainSettings(TrainerSettings):
    """train-reward's `train` section: the shared trainer fields (raypipe.train.common.TrainerSettings) + these."""
    loss: str = "btt"  # bt | btt | regression
    theta: float = 5.0  # BTT tie parameter (> 1)
    # Loss weight per dimension (unnamed dimensions weigh 1; {} = the plain masked mean of SPEC §3.2), e.g. {TA: 3}
    # to give a slow dimension a larger share of the update.
    dim_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1
    batch_pairs: int = 8  # pairs per worker per step
    epochs: int = 2
    eval_every: int = 100  # steps between validation accuracy points of the learning curve
    prefetch_batches: int = 4
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
    out: str = "reward-out"
    address: str | None = None
    progress: bool = True


def tiny_sampling() -> SamplingConfig:
    return SamplingConfig(fps=4.0, max_frames=16)
