"""Online alignment's pieces (SPEC §9), pure torch: Flow-GRPO's SDE sampler with per-step log-probabilities, its
advantages and clipped loss with a KL term, and online Flow-DPO's best-vs-worst pairs.

    out = sample_sde(velocity, text, uncond, noise, steps=10, a=0.7, shift=3.0, generator=g)
    # out.latents [B, ...] (x0), out.states [B, S+1, ...] (x at each grid time), out.log_probs [B, S]
    adv = group_advantages(rewards, groups)                          # (r − mean_g) / (std_g + δ)
    x_next, mean, std = sde_step(x, v, t, t_next, a)                 # one transition (recomputed when training)
    loss, stats = grpo_loss(log_p, log_p_old, adv, clip=0.2, kl=gaussian_kl(mean, mean_ref, std), beta=0.04)
    pairs = best_worst(rewards, groups)                              # online Flow-DPO: (best, worst) per prompt

The SDE (Flow-GRPO; t = 1 noise, a step from t to t' < t, v̂ the guided velocity at (x_t, t)):

    x_t' = x_t + [v̂ + (σ_t² / (2t))·(x_t + (1−t)·v̂)]·(t' − t) + σ_t·sqrt(t − t')·ε,   σ_t = a·sqrt(t/(1−t))

It has the ODE's marginals for any noise level `a` (a = 0 is the Euler step of SPEC §1), so a trained policy's
samples stay on distribution while each transition is a Gaussian with mean μ_θ(x_t) (the bracket) and std
s = σ_t·sqrt(t − t'). σ_t is undefined at t = 1: there it is taken at the grid's next time (as flow_grpo does).

Log-probabilities are the Gaussian log-density of the sampled x_t' per element, averaged over a sample's elements
(flow_grpo's convention; a sum over ~10⁵ latent elements would make every importance ratio 0 or ∞), and the KL of
SPEC §9, ‖μ_θ − μ_ref‖² / (2s²), is averaged over elements the same way, so the two terms share a scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from raypipe.flow.conditioning import empty_prompt_like
from raypipe.flow.sampler import time_grid

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _per_sample(t, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float32, device=like.device)
    return t.reshape(-1, *([1] * (like.dim() - 1))) if t.dim() else t


def sde_sigma(t, a: float, t_cap: float) -> torch.Tensor:
    """σ_t = a·sqrt(t/(1−t)), with t capped at `t_cap` (< 1) where it would be 1."""
    t = torch.as_tensor(t, dtype=torch.float32)
    tc = torch.clamp(t, max=float(t_cap))
    return float(a) * torch.sqrt(tc / (1 - tc))


def sde_mean_std(x: torch.Tensor, v: torch.Tensor, t, t_next, a: float, t_cap: float):
    """(μ, s): the mean and std of the transition x_t -> x_t' (the module docstring's formula)."""
    t_ = _per_sample(t, x)
    dt = _per_sample(t_next, x) - t_
    sigma = _per_sample(sde_sigma(t, a, t_cap), x)
    xf, vf = x.float(), v.float()
    mean = xf + (vf + sigma**2 / (2 * t_) * (xf + (1 - t_) * vf)) * dt
    return mean, sigma * torch.sqrt(-dt)


def sde_step(x, v, t, t_next, a: float, t_cap: float | None = None, noise=None, generator=None):
    """One transition: (x_t', μ, s). `noise` ε (or drawn from `generator`, on the CPU); `t_cap` default: t_next."""
    t_cap = float(t_next if not torch.is_tensor(t_next) else t_next.max()) if t_cap is None else t_cap
    mean, std = sde_mean_std(x, v, t, t_next, a, t_cap)
    if noise is None:
        noise = torch.randn(x.shape, generator=generator).to(x.device)
    return mean + std * noise.float(), mean, std


def step_log_prob(x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x_t'; μ, s²) per element, averaged over each sample's elements: [B]."""
    z = (x_next.float() - mean) / std
    log_p = -0.5 * z**2 - torch.log(std) - LOG_SQRT_2PI
    return log_p.expand_as(z).flatten(1).mean(dim=1)


def gaussian_kl(mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(μ_θ, s²) ‖ N(μ_ref, s²)) = (μ_θ − μ_ref)² / (2s²) per element, averaged per sample: [B]."""
    kl = (mean.float() - mean_ref.float()) ** 2 / (2 * std**2)
    return kl.expand_as(mean).flatten(1).mean(dim=1)


@dataclass
class Rollout:
    latents: torch.Tensor  # x at t = 0, [B, ...]
    states: torch.Tensor  # x at every grid time, [B, S+1, ...] (states[:, 0] is the noise)
    log_probs: torch.Tensor  # log p of each sampled transition under the sampling policy, [B, S]
    times: torch.Tensor  # the grid, [S+1], from 1 to 0


@torch.no_grad()
def sample_sde(
    velocity: Callable,
    text: torch.Tensor,
    uncond: torch.Tensor | None,
    noise: torch.Tensor,
    steps: int,
    a: float,
    cfg_scale: float = 1.0,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Samples by the SDE from `noise` (t = 1) to t = 0 with CFG (as `flow.sampler.sample`), keeping every state and
    each transition's log-probability. `generator` draws the per-step ε on the CPU (reproducible on any device)."""
    grid = time_grid(steps, shift)
    t_cap = float(grid[1])
    x = noise.clone().float()
    states, log_probs = [x], []
    for i in range(steps):
        t_now, t_next = float(grid[i]), float(grid[i + 1])
        v = guided_velocity(velocity, x, t_now, text, uncond, cfg_scale)
        if v.device != x.device:
            x = x.to(v.device)
        x, mean, std = sde_step(x, v, t_now, t_next, a, t_cap=t_cap, generator=generator)
        log_probs.append(step_log_prob(x, mean, std))
        states.append(x)
    return Rollout(x, torch.stack(states, dim=1), torch.stack(log_probs, dim=1), grid)


def guided_velocity(velocity: Callable, x: torch.Tensor, t, text, uncond, cfg_scale: float) -> torch.Tensor:
    """v̂ at (x, t) (t: one time, or one per sample): v_u + s·(v_c − v_u) when `cfg_scale` ≠ 1 and an unconditional
    embedding is given, else v_c."""
    tt = t if torch.is_tensor(t) and t.dim() else torch.full((x.shape[0],), float(t), device=x.device)
    if cfg_scale != 1.0 and uncond is not None:
        both = velocity(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([text, empty_prompt_like(uncond, text)]))
        v_c, v_u = both.chunk(2)
        return v_u + cfg_scale * (v_c - v_u)
    return velocity(x, tt, text)


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, delta: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i − mean_g r) / (std_g r + δ) within each sample's group (its prompt); std is the population std
    (÷ n). A group whose rewards are all equal gets A = 0."""
    rewards, groups = rewards.float(), torch.as_tensor(groups)
    adv = torch.zeros_like(rewards)
    for g in torch.unique(groups):
        idx = groups == g
        r = rewards[idx]
        sd = r.std(unbiased=False)
        adv[idx] = (r - r.mean()) / (sd + delta) if float(sd) > 0 else torch.zeros_like(r)
    return adv


def grpo_loss(
    log_p: torch.Tensor,
    log_p_old: torch.Tensor,
    advantages: torch.Tensor,
    clip: float,
    kl: torch.Tensor | None = None,
    beta: float = 0.0,
    adv_clip: float | None = None,
) -> tuple[torch.Tensor, dict]:
    """−mean min(ρ·A, clip(ρ, 1−ε, 1+ε)·A) + β·mean KL over the trained transitions (one entry each; A is the
    sample's advantage, clipped to ±`adv_clip` when given), ρ = exp(log p_θ − log p_old)."""
    a = advantages.float()
    if adv_clip is not None:
        a = a.clamp(-adv_clip, adv_clip)
    ratio = torch.exp(log_p.float() - log_p_old.float())
    surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1 - clip, 1 + clip) * a)
    policy = -surrogate.mean()
    loss = policy
    stats = {
        "policy_loss": float(policy.detach()),
        "clip_fraction": float(((ratio - 1).abs() > clip).float().mean()),
        "ratio_mean": float(ratio.detach().mean()),
    }
    if kl is not None:
        kl_mean = kl.float().mean()
        loss = loss + beta * kl_mean
        stats["kl"] = float(kl_mean.detach())
    return loss, stats


def best_worst(rewards, groups) -> list[tuple[int, int]]:
    """Online Flow-DPO's pairs: per group (prompt) the index of its highest and of its lowest reward (first of
    equals), in group order of first appearance; a group whose rewards are all equal (or of one sample, or with a
    NaN reward) gives no pair."""
    rewards = torch.as_tensor(rewards, dtype=torch.float64)
    groups = torch.as_tensor(np.array(groups)).tolist()  # a copy: an Arrow-backed array is read-only
    pairs = []
    for g in dict.fromkeys(groups):
        idx = [i for i, x in enumerate(groups) if x == g]
        r = rewards[idx]
        if len(idx) < 2 or torch.isnan(r).any() or float(r.max()) == float(r.min()):
            continue
        pairs.append((idx[int(torch.argmax(r))], idx[int(torch.argmin(r))]))
    return pairs
