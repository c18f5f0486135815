"""Flow-matching objectives for aligning the generator (SPEC §1, §5). Pure torch, model-agnostic.

    x_t, v = noised(x0, eps, t)                        # x_t = (1-t)·x0 + t·eps, v = eps - x0
    e = flow_error(v_hat, v)                           # per-sample mean squared velocity error, [B]
    loss, stats = dpo_loss(e_w, e_ref_w, e_l, e_ref_l, beta_t(beta, t, "constant"))
    loss = rwr_loss(e, rewards, tau)                   # Σ softmax(r/τ)_i · e_i
    loss = sft_loss(e)                                 # plain flow matching on the chosen videos

Convention (SPEC §1): t ∈ [0, 1], t = 1 is pure noise; diffusers receives timestep = 1000·t.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BETA_SCHEDULES = ("constant", "derived")


def zero_loss(module: torch.nn.Module) -> torch.Tensor:
    """The loss of a step with nothing to learn from (every row failed to decode, an empty share of a round): zero,
    with a graph, so the ranks stay in lockstep."""
    return sum(p.sum() for p in module.parameters() if p.requires_grad) * 0.0


def sample_t(
    n: int,
    generator: torch.Generator | None = None,
    shift: float = 1.0,
    device: str | torch.device = "cpu",
    t_range: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Logit-normal training timesteps t = sigmoid(n), n ~ N(0, 1), then the family's shift
    t' = shift·t / (1 + (shift - 1)·t) (identity for shift 1), as in SD3 / Wan. With `t_range` = (lo, hi) (Wan2.2
    A14B training one expert): the same distribution conditioned on lo ≤ t' < hi — n drawn from the normal
    truncated to the matching interval by its inverse CDF (t' is monotone in n)."""
    if t_range is None:
        t = torch.sigmoid(torch.randn(n, generator=generator, device=device))
    else:
        lo, hi = (_unshift(float(x), shift) for x in t_range)
        a, b = (torch.special.ndtr(torch.logit(torch.tensor(x, dtype=torch.float64))) for x in (lo, hi))
        u = a + (b - a) * torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        t = torch.sigmoid(torch.special.ndtri(u)).float()
    if shift != 1.0:
        t = shift * t / (1 + (shift - 1) * t)
    return t


def gen_t_range(gen) -> tuple[float, float] | None:
    """The flow times a family's trainable transformer handles (Wan2.2 A14B with one expert trained), else None."""
    return getattr(gen.transformer, "t_range", None)


def _unshift(t: float, shift: float) -> float:
    """The t before the shift that gives `t` after it (the inverse of shift·t / (1 + (shift − 1)·t))."""
    return t / (shift - (shift - 1) * t)


def _expand(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def noised(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target velocity) for clean samples x0 [B, ...], noise eps and times t [B]."""
    tt = _expand(t, x0)
    return (1 - tt) * x0 + tt * eps, eps - x0


def flow_error(v_hat: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """e = mean over all non-batch dims of (v̂ - v)², per sample: [B]."""
    return (v_hat.float() - v.float()).pow(2).flatten(1).mean(dim=1)


def beta_t(beta: float, t: torch.Tensor, schedule: str = "constant") -> torch.Tensor:
    """β_t per sample: `constant` β (the paper's recommendation) or `derived` β·(1 - t)²."""
    if schedule == "constant":
        return torch.full_like(t, float(beta), dtype=torch.float32)
    if schedule == "derived":
        return float(beta) * (1 - t.float()) ** 2
    raise ValueError(f"beta schedule must be one of {BETA_SCHEDULES}, got {schedule!r}")


def dpo_loss(
    e_w: torch.Tensor, e_ref_w: torch.Tensor, e_l: torch.Tensor, e_ref_l: torch.Tensor, beta: torch.Tensor
) -> tuple[torch.Tensor, dict]:
    """Flow-DPO (SPEC §5.1): mean over pairs of -log σ(-(β_t/2)·[(e_θ^w - e_ref^w) - (e_θ^l - e_ref^l)]).

    The reference errors carry no gradient. Stats: `implicit_acc` (share of pairs whose logit is > 0, i.e. the
    policy improved the winner more than the loser relative to the reference), `reward_margin` (mean logit),
    `winner_gain` / `loser_gain` (mean e_ref - e_θ)."""
    inside = (e_w - e_ref_w.detach()) - (e_l - e_ref_l.detach())
    logit = -0.5 * beta.to(inside.dtype) * inside
    loss = -F.logsigmoid(logit).mean()
    with torch.no_grad():
        stats = {
            "implicit_acc": float((logit > 0).float().mean()),
            "reward_margin": float(logit.mean()),
            "winner_gain": float((e_ref_w - e_w).mean()),
            "loser_gain": float((e_ref_l - e_l).mean()),
        }
    return loss, stats


def rwr_weights(rewards: torch.Tensor, tau: float) -> torch.Tensor:
    """Self-normalised reward weights softmax(r / τ) over the batch (sum to 1)."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return torch.softmax(rewards.float() / tau, dim=0)


def rwr_loss(
    errors: torch.Tensor,
    rewards: torch.Tensor,
    tau: float,
    real_errors: torch.Tensor | None = None,
    lambda_real: float = 0.0,
) -> torch.Tensor:
    """Flow-RWR (SPEC §5.2): Σ_i softmax(r/τ)_i · e_i, plus λ_real · mean(e_real) (LiFT's real-data term)."""
    loss = (rwr_weights(rewards, tau).detach() * errors).sum()
    if real_errors is not None and lambda_real:
        loss = loss + lambda_real * real_errors.mean()
    return loss


def sft_loss(errors: torch.Tensor) -> torch.Tensor:
    """Plain flow matching on the chosen videos (SPEC §5.3)."""
    return errors.mean()


def dpo_sft_loss(
    e_w: torch.Tensor,
    e_ref_w: torch.Tensor,
    e_l: torch.Tensor,
    e_ref_l: torch.Tensor,
    beta: torch.Tensor,
    is_real: torch.Tensor,
    lambda_sft: float,
) -> tuple[torch.Tensor, dict]:
    """Flow-DPO with an SFT term on real / high-quality videos mixed into the same batch (the paper's suggested
    remedy for what DPO costs the dimensions it does not target):

        L = L_DPO(pairs: rows with is_real = 0) + λ_sft · mean_{rows with is_real = 1} e_θ^w

    where a real row carries its video as the "winner" (e^w is plain flow matching on it, SPEC §5.3) and its loser
    side is ignored. A batch without pairs has no DPO term (0), one without real rows no SFT term."""
    real = is_real.to(e_w.device).bool()
    pairs = ~real
    if bool(pairs.any()):
        loss, stats = dpo_loss(e_w[pairs], e_ref_w[pairs], e_l[pairs], e_ref_l[pairs], beta[pairs])
    else:
        loss, stats = e_w.sum() * 0.0, {}
    if bool(real.any()) and lambda_sft:
        sft = e_w[real].mean()
        loss = loss + lambda_sft * sft
        stats["sft_loss"] = float(sft.detach())
    stats["real_share"] = float(real.float().mean())
    return loss, stats


LOG2 = math.log(2.0)


# --- LiFT (SPEC §8) ---------------------------------------------------------------------------------------------
def v_prediction_noised(
    x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion (v-prediction, e.g. CogVideoX): x_t = sqrt(ᾱ)·x0 + sqrt(1−ᾱ)·eps and the target
    v = sqrt(ᾱ)·eps − sqrt(1−ᾱ)·x0, for ᾱ_t [B] per sample."""
    a = _expand(alpha_bar, x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps, a.sqrt() * eps - (1 - a).sqrt() * x0


def x0_from_v(x_t: torch.Tensor, v_hat: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x̂0 = sqrt(ᾱ)·x_t − sqrt(1−ᾱ)·v̂ (exact when v̂ = v)."""
    a = _expand(alpha_bar, x_t)
    return a.sqrt() * x_t - (1 - a).sqrt() * v_hat


def lift_v_loss(x0_hat: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """LiFT's reward-weighted loss for a v-prediction model (SPEC §8):
    L = mean_i  w_i · mean( (1/(1−ᾱ_t,i)) · (x̂0_i − x0_i)² ), real videos entering with their own w_i."""
    per = ((x0_hat.float() - x0.float()) ** 2).flatten(1).mean(1) / (1 - alpha_bar.float())
    return (weights.float() * per).mean()


def lift_flow_loss(errors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """LiFT's weighting on a flow model (SPEC §8): L = mean_i w_i · e_i with e the per-sample flow error of §1."""
    return (weights.float() * errors.float()).mean()
