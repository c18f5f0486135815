"""Sampling with and without reward guidance (Flow-NRG), without Ray: load a generator for inference, and
`guided_samples` — the one sampler generate, sample-pairs, the NRG bench and the Serve /generate endpoint call."""

from __future__ import annotations

import time

import torch

from raypipe.config import ConfigError
from raypipe.flow.conditioning import encode_with_images, pixel_frames
from raypipe.flow.families import load_family
from raypipe.flow.lora import load_lora
from raypipe.flow.sampler import sample
from raypipe.nrg.guidance import RewardGuidance

MAX_STEPS = 200


def guided_samples(
    gen,
    reward_model,
    prompts: list[str],
    weights: dict[str, float],
    strength: float,
    seed: int,
    steps: int,
    cfg_scale: float,
    shape: tuple[int, ...],
    batch: int = 16,
    decode: bool = True,
    images=None,
) -> dict:
    """Samples for `prompts` (noise from `seed`: identical for any weights/strength), guided when `reward_model`
    is given and λ·w ≠ 0; `images` (uint8 [N, H, W, 3]): image-to-video first frames. Returns {"z0", "videos"
    (uint8 [N, T, H, W, 3] if decode), "latent_rewards" [N, D] at t = 0 (None without a reward model), "trace"
    (per batch, per step), "sample_s"}."""
    if not 1 <= steps <= MAX_STEPS:
        raise ConfigError(f"steps must be in [1, {MAX_STEPS}], got {steps}")
    noise = torch.randn((len(prompts), *shape), generator=torch.Generator().manual_seed(seed))
    uncond = gen.encode_prompts([""])
    zs, rewards, traces = [], [], []
    t0 = time.perf_counter()
    for start in range(0, len(prompts), batch):
        part = prompts[start : start + batch]
        part_images = None if images is None else images[start : start + len(part)]  # image-to-video
        text = encode_with_images(gen, part, part_images, pixel_frames(gen, shape[1]))
        guide = RewardGuidance(reward_model, text, weights, strength) if reward_model is not None else None
        z = sample(
            gen.velocity,
            text,
            uncond,
            noise[start : start + len(part)].shape,
            steps=steps,
            cfg_scale=cfg_scale,
            shift=gen.shift,
            noise=noise[start : start + len(part)],
            guidance=guide,
        )
        zs.append(z)
        if reward_model is not None:
            with torch.no_grad():
                rewards.append(reward_model(z, torch.zeros(len(part)), text).float().cpu())
            traces.append(guide.trace)
    sample_s = time.perf_counter() - t0
    z0 = torch.cat(zs)
    return {
        "z0": z0,
        "videos": gen.decode_latents(z0) if decode else None,
        "latent_rewards": torch.cat(rewards).numpy() if rewards else None,
        "trace": traces,
        "sample_s": sample_s,
    }


def resolve_device(device: str = "auto") -> str:
    """ "auto" -> "cuda" when a GPU is visible, else "cpu"; "cuda" without one is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cuda or cpu, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no GPU is visible (use device=auto or cpu)")
    return device


def load_generator(path: str, lora: str | None = None, device: str = "auto", dtype: str = "float32"):
    if not path:
        raise ConfigError(
            "generator is required (generator=PATH, a WanPipeline or CogVideoXPipeline folder, e.g. gen-out/flow/final)"
        )
    gen = load_family(path, dtype=dtype, device=resolve_device(device))
    if lora:
        load_lora(gen.pipeline, lora)
    gen.transformer.eval().requires_grad_(False)
    return gen
