"""Reward-guided velocity of Flow-NRG (SPEC §6.2) and the guided sampler.

    guide = RewardGuidance(latent_reward, text, weights={"VQ": .1, "MQ": .1, "TA": .8}, strength=2.0)
    z0 = sample(gen.velocity, text, uncond, shape, steps=20, cfg_scale=4, shift=gen.shift, noise=noise,
                guidance=guide)

ṽ(x_t, t, c) = v̂_cfg(x_t, t, c) − λ · t/(1 − t) · ∇_{x_t} Σ_d w_d r_φ,d(x_t, t, c), applied after CFG at every step
but where t/(1 − t) is undefined (t = 1, the first step). The gradient goes through the latent reward model only:
no VAE decode, no pixel-space model. All-zero weights or λ = 0 return v unchanged (bit for bit).
"""

from __future__ import annotations

import torch

T_ONE = 1.0 - 1e-6  # t at or above this counts as t = 1 (the first step): no guidance


def guidance_scale(t: torch.Tensor) -> torch.Tensor:
    """t / (1 − t), zero where t >= 1 (undefined: the first step is not guided)."""
    t = t.float()
    safe = torch.where(t < T_ONE, t, torch.zeros_like(t))
    return torch.where(t < T_ONE, safe / (1.0 - safe), torch.zeros_like(t))


class RewardGuidance:
    """Callable `guidance(x, t, v) -> ṽ` for `raypipe.flow.sampler.sample`; records the mean guided reward and
    the gradient norm of each step in `trace`."""

    def __init__(self, reward_model, text: torch.Tensor, weights: dict[str, float], strength: float):
        self.model = reward_model
        self.text = text
        self.w = torch.tensor([float(weights.get(d, 0.0)) for d in reward_model.dims])
        self.strength = float(strength)
        self.trace: list[dict] = []

    @property
    def active(self) -> bool:
        return self.strength != 0.0 and bool((self.w != 0).any())

    def objective(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Σ_d w_d r_φ,d(x, t, c) per sample [B]."""
        return (self.model(x, t, self.text) * self.w.to(x.device)).sum(dim=1)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return v
        scale = guidance_scale(t)
        if not bool((scale > 0).any()):
            return v
        with torch.enable_grad():
            xg = x.detach().float().requires_grad_(True)
            value = self.objective(xg, t.to(xg.device))
            (grad,) = torch.autograd.grad(value.sum(), xg)
        self.trace.append(
            {"t": float(t.max()), "reward": float(value.detach().mean()), "grad_norm": float(grad.norm())}
        )
        shape = (-1,) + (1,) * (v.dim() - 1)
        return v - self.strength * scale.view(shape).to(v) * grad.to(v)
