"""`raypipe generate`: reward-guided sampling (Flow-NRG) from a generator, with per-dimension weights.

    raypipe generate --generator gen-out/flow/final --latent-reward lr-out/final --prompts 8 \\
        --weights VQ=0.1,MQ=0.1,TA=0.8 --strength 2 --seed 0 --out gen-samples

Writes OUT/videos/NNNN.mp4 and OUT/samples.json (per sample: prompt, seed, file, the latent reward model's rewards
of the final clean latents per dimension, and their weighted sum). With --strength 0 or all-zero weights the
samples are bit-for-bit the unguided ones for the same seed. `guided_samples` is the function the NRG benchmark and
the Serve /generate endpoint call.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from raypipe.config import ConfigError, load_config, save_config

MAX_STEPS = 200


@dataclasses.dataclass
class GenerateConfig:
    generator: str = ""  # a WanPipeline folder (e.g. gen-out/flow/final)
    lora: str | None = None  # optional adapters from train-flow (OUT/final)
    latent_reward: str | None = None  # a train-latent-reward model (OUT/final); needed when guiding
    prompts: str = "8"  # a number (seeded SynthPref prompts), a .txt / manifest, or prompts separated by "|"
    weights: str = ""  # VQ=0.1,MQ=0.1,TA=0.8 (missing dimensions 0)
    strength: float = 0.0  # λ
    seed: int = 0
    steps: int = 20
    cfg_scale: float = 4.0
    frames: int = 9
    height: int = 32
    width: int = 32
    fps: float = 8.0
    batch: int = 16
    device: str = "auto"  # auto (cuda when there is one) | cuda | cpu
    dtype: str = "float32"  # bfloat16 on GPUs
    out: str = "generate-out"


def latent_shape(gen, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    if (frames - 1) % gen.temporal or height % (2 * gen.spatial) or width % (2 * gen.spatial):
        raise ConfigError(f"frames must be 1 + k·{gen.temporal} and height/width multiples of {2 * gen.spatial}, "
                          f"got {frames}x{height}x{width}")
    return (int(gen.pipeline.vae.config.z_dim), 1 + (frames - 1) // gen.temporal, height // gen.spatial,
            width // gen.spatial)


def prompt_list(spec: str, seed: int) -> list[str]:
    from raypipe.flow.eval_job import read_prompts

    if spec.isdigit() or Path(spec).exists():
        return read_prompts(spec, seed)
    prompts = [p.strip() for p in spec.split("|") if p.strip()]
    if not prompts:
        raise ConfigError("--prompts: give a number, a file, or prompts separated by '|'")
    return prompts


def guided_samples(gen, reward_model, prompts: list[str], weights: dict[str, float], strength: float, seed: int,
                   steps: int, cfg_scale: float, shape: tuple[int, ...], batch: int = 16,
                   decode: bool = True) -> dict:
    """Samples for `prompts` (noise from `seed`: identical for any weights/strength), guided when `reward_model`
    is given and λ·w ≠ 0. Returns {"z0", "videos" (uint8 [N, T, H, W, 3] if decode), "latent_rewards" [N, D] at
    t = 0 (None without a reward model), "trace" (per batch, per step), "sample_s"}."""
    from raypipe.flow.sampler import sample
    from raypipe.nrg.guidance import RewardGuidance

    if not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"steps must be in [1, {MAX_STEPS}], got {steps}")
    noise = torch.randn((len(prompts), *shape), generator=torch.Generator().manual_seed(seed))
    uncond = gen.encode_prompts([""])
    zs, rewards, traces = [], [], []
    t0 = time.perf_counter()
    for start in range(0, len(prompts), batch):
        part = prompts[start:start + batch]
        text = gen.encode_prompts(part)
        guide = RewardGuidance(reward_model, text, weights, strength) if reward_model is not None else None
        z = sample(gen.velocity, text, uncond, noise[start:start + len(part)].shape, steps=steps,
                   cfg_scale=cfg_scale, shift=gen.shift, noise=noise[start:start + len(part)], guidance=guide)
        zs.append(z)
        if reward_model is not None:
            with torch.no_grad():
                rewards.append(reward_model(z, torch.zeros(len(part)), text).float().cpu())
            traces.append(guide.trace)
    sample_s = time.perf_counter() - t0
    z0 = torch.cat(zs)
    return {"z0": z0, "videos": gen.decode_latents(z0) if decode else None,
            "latent_rewards": torch.cat(rewards).numpy() if rewards else None, "trace": traces,
            "sample_s": sample_s}


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; "cuda" without one is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cuda or cpu, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no GPU is visible (use device=auto or cpu)")
    return device


def load_generator(path: str, lora: str | None = None, device: str = "auto", dtype: str = "float32"):
    from raypipe.flow.family import WanFamily

    if not path:
        raise ConfigError("--generator is required (a WanPipeline folder, e.g. gen-out/flow/final)")
    gen = WanFamily.load(path, dtype=dtype, device=resolve_device(device))
    if lora:
        gen.pipeline.load_lora_weights(lora)
    gen.transformer.eval().requires_grad_(False)
    return gen


def run_generate(cfg: GenerateConfig) -> dict:
    from raypipe.nrg.guidance import parse_weights
    from raypipe.nrg.model import LatentReward
    from raypipe.video.encode import write_mp4

    gen = load_generator(cfg.generator, cfg.lora, cfg.device, cfg.dtype)
    model = LatentReward.from_pretrained(cfg.latent_reward, dtype=cfg.dtype, device=str(gen.device)) \
        if cfg.latent_reward else None
    if model is None and (cfg.strength or cfg.weights):
        raise ConfigError("guidance (--strength / --weights) needs --latent-reward (train one with "
                          "`raypipe train-latent-reward`)")
    try:
        weights = parse_weights(cfg.weights, model.dims) if model is not None else {}
    except ValueError as err:
        raise ConfigError(str(err)) from None
    prompts = prompt_list(cfg.prompts, cfg.seed)
    shape = latent_shape(gen, cfg.frames, cfg.height, cfg.width)
    out = Path(cfg.out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    result = guided_samples(gen, model, prompts, weights, cfg.strength, cfg.seed, cfg.steps, cfg.cfg_scale, shape,
                            cfg.batch)
    rows = []
    for i, (prompt, video) in enumerate(zip(prompts, result["videos"])):
        path = out / "videos" / f"{i:04d}.mp4"
        write_mp4(video, path, cfg.fps)
        row = {"index": i, "prompt": prompt, "seed": cfg.seed, "noise_index": i, "file": str(path)}
        if result["latent_rewards"] is not None:
            r = result["latent_rewards"][i]
            row["latent_rewards"] = {d: float(v) for d, v in zip(model.dims, r)}
            row["weighted_reward"] = float(sum(weights[d] * float(v) for d, v in zip(model.dims, r)))
        rows.append(row)
    summary = {"samples": rows, "weights": weights, "strength": cfg.strength, "steps": cfg.steps,
               "cfg_scale": cfg.cfg_scale, "sample_s": round(result["sample_s"], 2)}
    (out / "samples.json").write_text(json.dumps(summary, indent=2))
    print(f"generate: {len(rows)} videos in {out / 'videos'} ({summary['sample_s']} s sampling); "
          f"rewards in {out / 'samples.json'}", flush=True)
    if rows and "weighted_reward" in rows[0]:
        print(f"  mean weighted latent reward {np.mean([r['weighted_reward'] for r in rows]):.4f}", flush=True)
    return summary


def generate_from_args(args) -> int:
    pairs = {"generator": args.generator, "lora": args.lora, "latent_reward": args.latent_reward,
             "prompts": args.prompts, "weights": args.weights, "strength": args.strength, "seed": args.seed,
             "steps": args.steps, "out": args.out}
    extra = [f"{k}={json.dumps(v)}" for k, v in pairs.items() if v is not None]
    run_generate(load_config(GenerateConfig, args.config, list(args.overrides or []) + extra))
    return 0
