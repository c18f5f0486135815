"""`raypipe eval-flow`: win rate of an aligned generator over its base, by the reward model and by the oracle.

    raypipe eval-flow --out eval-flow-out generator=gen-out/flow/final lora=dpo-out/final reward=reward-out/final \\
        prompts=64
    raypipe eval-flow --out eval-lift generator=assets/tiny-generator aligned=lift-out/final reward=...  # full FT

Identical prompts and initial noise for both models; each sample is written as an mp4 (OUT/videos/{base,aligned})
and scored by the reward checkpoint exactly as relabel would see it (decoded with the checkpoint's sampling).
Per dimension: win rate = share of prompts where aligned beats base (a tie counts ½), by the reward model and, on
the same samples, by the SynthPref oracle (the stand-in for human raters). A reward win the oracle does not
confirm is flagged as reward hacking. Also `grid.gif`: base | aligned side by side for the first prompts.
"""

from __future__ import annotations

import dataclasses
import json

import torch

from raypipe.config import ClipConfig, ConfigError, save_config
from raypipe.data.location import StagedOutput
from raypipe.data.prompts import read_prompts
from raypipe.flow.evaluation import compare, score_samples, write_grid_gif
from raypipe.flow.sampler import sample_videos
from raypipe.nrg.sampling import load_generator


@dataclasses.dataclass
class FlowEvalConfig:
    generator: str = (
        ""  # a WanPipeline / CogVideoXPipeline folder (the pretrained generator, the base of the comparison)
    )
    lora: str = ""  # an adapter folder written by train-flow (OUT/final)
    aligned: str = ""  # or a whole aligned pipeline folder (train-flow with lora.enabled=false)
    reward: str = ""  # a VideoReward checkpoint
    prompts: str = "64"  # a number (seeded SynthPref prompts), a .txt (one per line) or a manifest with `prompt`
    out: str = "eval-flow-out"  # output folder, or an object-store prefix (s3://bucket/eval)
    clip: ClipConfig = dataclasses.field(default_factory=lambda: ClipConfig(frames=9, height=32, width=32))
    steps: int = 20  # sampling steps (Euler)
    cfg_scale: float = 4.0  # classifier-free guidance scale
    seed: int = 0  # prompt and noise seed (the same for base and aligned)
    fps: float = 8.0  # frame rate of the written mp4s
    grid: int = 8  # prompts shown in grid.gif
    hacking_margin: float = 0.05  # reward win rate above oracle win rate by more than this (on a win) = hacking


def run(cfg: FlowEvalConfig) -> dict:
    for name in ("generator", "reward"):
        if not getattr(cfg, name):
            raise ConfigError(f"{name} is required ({name}=PATH)")
    if bool(cfg.lora) == bool(cfg.aligned):
        raise ConfigError("one of lora=PATH (adapters on the generator) or aligned=PATH (a whole pipeline) is required")
    prompts = read_prompts(cfg.prompts, cfg.seed)
    stage = StagedOutput(cfg.out)  # a local folder, or staged locally and published to an object store
    out = stage.dir
    save_config(cfg, out)
    samples = {}
    for name in ("base", "aligned"):
        if name == "aligned" and cfg.aligned:
            gen = load_generator(cfg.aligned)
        else:
            gen = load_generator(cfg.generator, cfg.lora if name == "aligned" else None)
        shape = gen.latent_shape(cfg.clip.frames, cfg.clip.height, cfg.clip.width, check=True)
        torch.manual_seed(cfg.seed)
        samples[name] = sample_videos(gen, prompts, shape, cfg.steps, cfg.cfg_scale, cfg.seed)  # same noise
    scores, oracle, dims = score_samples(samples, prompts, cfg.reward, out, cfg.fps)
    report = compare(scores, oracle, dims, prompts, "aligned", "base", cfg.hacking_margin)
    n = min(cfg.grid, len(prompts))
    write_grid_gif(samples["base"][:n], samples["aligned"][:n], out / "grid.gif")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    stage.publish()
    print(json.dumps({k: report[k] for k in ("reward_win_rate", "oracle_win_rate", "reward_hacking")}, indent=2))
    return report
