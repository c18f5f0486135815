"""Euler sampling of a rectified-flow generator with classifier-free guidance (SPEC §1), in latent space.

    z0 = sample(velocity, text, uncond, shape=(2, 4, 5, 14, 14), steps=20, cfg_scale=5.0, shift=3.0, generator=g)

Integrates from t = 1 (noise) to t = 0: x_{t-Δ} = x_t − Δ·v, with v = v_u + s·(v_c − v_u) when `cfg_scale` ≠ 1
(`uncond` = the empty prompt's embedding; an image-to-video prompt keeps its image there). The time grid is
uniform in the unshifted time and mapped through the family's shift t' = shift·t / (1 + (shift−1)·t), as the
diffusers FlowMatchEulerDiscreteScheduler does.
`velocity(x, t, text)` is any callable (the family's `velocity`, a LoRA policy, or a test's exact field);
`guidance(x, t, v) -> v` (optional) lets Flow-NRG adjust the velocity at each step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from raypipe.flow.conditioning import empty_prompt_like, encode_with_images, pixel_frames


def time_grid(steps: int, shift: float = 1.0) -> torch.Tensor:
    """steps + 1 decreasing times from 1 to 0 (shifted)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = torch.linspace(1.0, 0.0, steps + 1)
    return shift * t / (1 + (shift - 1) * t) if shift != 1.0 else t


@torch.no_grad()
def sample(
    velocity: Callable,
    text: torch.Tensor,
    uncond: torch.Tensor | None,
    shape: tuple[int, ...],
    steps: int = 20,
    cfg_scale: float = 1.0,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    guidance: Callable | None = None,
) -> torch.Tensor:
    """Latents x0 [B, ...] from noise (given, or drawn from `generator`)."""
    # Noise is drawn on the CPU (the same samples on any device); x then moves to where the velocity comes from.
    x = noise.clone() if noise is not None else torch.randn(shape, generator=generator)
    grid = time_grid(steps, shift)
    use_cfg = cfg_scale != 1.0 and uncond is not None
    for i in range(steps):
        t_now, t_next = float(grid[i]), float(grid[i + 1])
        t = torch.full((x.shape[0],), t_now, device=x.device)
        if use_cfg:
            both = velocity(torch.cat([x, x]), torch.cat([t, t]), torch.cat([text, empty_prompt_like(uncond, text)]))
            v_c, v_u = both.chunk(2)
            v = v_u + cfg_scale * (v_c - v_u)
        else:
            v = velocity(x, t, text)
        if v.device != x.device:  # the first step on a GPU model
            x, t = x.to(v.device), t.to(v.device)
        if guidance is not None:
            v = guidance(x, t, v)
        x = x - (t_now - t_next) * v
    return x


def sample_videos(
    gen, prompts: list[str], latent_shape: tuple[int, ...], steps: int, cfg_scale: float, seed: int, images=None
) -> np.ndarray:
    """CFG samples (uint8 [N, T, H, W, 3]) with seeded initial noise (`images`: first frames, image-to-video)."""
    text = encode_with_images(gen, prompts, images, pixel_frames(gen, latent_shape[1]))
    uncond = gen.encode_prompts([""])
    noise = torch.randn((len(prompts), *latent_shape), generator=torch.Generator().manual_seed(seed))
    z = sample(gen.velocity, text, uncond, noise.shape, steps=steps, cfg_scale=cfg_scale, shift=gen.shift, noise=noise)
    return gen.decode_latents(z)
