"""A v-prediction diffusion model (CogVideoX) seen in flow form, so the sampler, Flow-DPO/RWR/SFT and guidance
work on it unchanged. Pure torch.

    alpha_bar, scale = vp_of_flow_time(s)             # flow time s in [0, 1] -> ᾱ and x_t = scale·x_s
    tau = timestep_of(alpha_bar, alphas_cumprod)      # the (continuous) training timestep with that ᾱ
    u = flow_velocity_of_v(x_t, v_hat, alpha_bar)     # the flow velocity eps - x0 the v prediction implies

Why it is exact: with a = sqrt(ᾱ), b = sqrt(1−ᾱ), x_t = a·x0 + b·eps. Dividing by (a + b) gives
x_s = (1−s)·x0 + s·eps with s = b / (a + b) — the flow path of SPEC §1. Conversely ᾱ = (1−s)² / ((1−s)² + s²)
and x_t = x_s / sqrt((1−s)² + s²). From v̂ = a·eps − b·x0: x̂0 = a·x_t − b·v̂, epŝ = b·x_t + a·v̂, and the
flow velocity is u = epŝ − x̂0.
"""

from __future__ import annotations

import torch


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def vp_of_flow_time(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ᾱ, scale) for flow times s [B]: ᾱ = (1−s)²/((1−s)²+s²) and x_t = scale·x_s, scale = 1/sqrt((1−s)²+s²)."""
    s = s.double()
    norm = (1 - s) ** 2 + s**2
    return ((1 - s) ** 2 / norm).float(), (1 / norm.sqrt()).float()


def timestep_of(alpha_bar: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The continuous timestep τ with ᾱ(τ) = alpha_bar, by linear interpolation in the scheduler's decreasing
    table ᾱ(0) > … > ᾱ(N−1); clamped to [0, N−1] outside it (ᾱ above ᾱ(0) is nearly clean data)."""
    table = alphas_cumprod.double().flip(0)  # increasing
    a = alpha_bar.double().clamp(float(table[0]), float(table[-1]))
    hi = torch.searchsorted(table, a).clamp(1, len(table) - 1)
    lo = hi - 1
    frac = (a - table[lo]) / (table[hi] - table[lo]).clamp_min(1e-30)
    flipped = lo.double() + frac  # index in the increasing table
    return (len(table) - 1 - flipped).float()


def flow_velocity_of_v(x_t: torch.Tensor, v_hat: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """u = epŝ − x̂0 with x̂0 = sqrt(ᾱ)·x_t − sqrt(1−ᾱ)·v̂ and epŝ = sqrt(1−ᾱ)·x_t + sqrt(ᾱ)·v̂."""
    a = _expand(alpha_bar.float().sqrt(), x_t)
    b = _expand((1 - alpha_bar.float()).clamp_min(0).sqrt(), x_t)
    x_t, v_hat = x_t.float(), v_hat.float()
    return (b * x_t + a * v_hat) - (a * x_t - b * v_hat)
