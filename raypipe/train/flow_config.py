"""Typed config of `raypipe train-flow` (generator pretraining, SFT, Flow-DPO, Flow-RWR)."""
from __future__ import annotations

import dataclasses

from raypipe.config import SynthConfig
from raypipe.flow.family import TinyWanConfig
from raypipe.flow.pairs import ClipConfig
from raypipe.train.common import TrainerSettings

ALGOS = ("pretrain", "sft", "dpo", "rwr")


@dataclasses.dataclass
class FlowLoraSettings:
    enabled: bool = True  # pretrain trains the whole transformer regardless
    r: int = 64
    alpha: int = 128
    dropout: float = 0.0


@dataclasses.dataclass
class FlowModelConfig:
    name_or_path: str | None = None  # a WanPipeline folder (local Wan2.1-T2V-1.3B-Diffusers); None: tiny random
    tiny: TinyWanConfig = dataclasses.field(default_factory=TinyWanConfig)
    tiny_seed: int = 0
    dtype: str = "float32"  # bfloat16 on GPUs
    lora: FlowLoraSettings = dataclasses.field(default_factory=FlowLoraSettings)


@dataclasses.dataclass
class FlowDataConfig:
    manifest: str | None = None  # preference manifest (labels), relabel output (margins/scores), or pointwise
    source: str = "labels"  # labels | margins (relabel output): how winners are chosen / rewards read
    weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"VQ": 1.0, "MQ": 1.0, "TA": 1.0})
    min_margin: float = 0.0  # |scalarised preference| must exceed this to make a pair
    video_root: str | None = None
    rows_per_block: int = 4  # rows per Ray Data decode task
    latent_cache: str | None = None  # a folder: VAE latents + text embeddings written once (built if missing)
    decode_cpus: float = 1.0


@dataclasses.dataclass
class FlowTrainSettings(TrainerSettings):
    """train-flow's `train` section: the shared trainer fields (raypipe.train.common.TrainerSettings) + these."""
    algo: str = "dpo"  # pretrain | sft | dpo | rwr
    cpus_per_worker: float = 0.5
    lr: float = 5e-6  # paper value for LoRA DPO
    batch: int = 4  # pairs (dpo) or videos (others) per worker per step
    checkpoint_every: int = 50
    log_every: int = 10
    beta: float = 500.0  # Flow-DPO β
    beta_schedule: str = "constant"  # constant | derived (β·(1-t)², ablation)
    tau: float = 1.0  # Flow-RWR temperature
    lambda_real: float = 0.0  # Flow-RWR: weight of plain flow matching on real videos (LiFT)
    prompt_dropout: float = 0.0  # share of prompts replaced by "" (classifier-free guidance); pretrain: 0.1


@dataclasses.dataclass
class FlowTrainConfig:
    model: FlowModelConfig = dataclasses.field(default_factory=FlowModelConfig)
    clip: ClipConfig = dataclasses.field(default_factory=ClipConfig)
    data: FlowDataConfig = dataclasses.field(default_factory=FlowDataConfig)
    synth: SynthConfig = dataclasses.field(default_factory=lambda: SynthConfig(pairs=512, seed=11))
    train: FlowTrainSettings = dataclasses.field(default_factory=FlowTrainSettings)
    out: str = "flow-out"
    address: str | None = None
    progress: bool = True
