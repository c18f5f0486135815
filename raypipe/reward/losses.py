"""Reward-model losses (SPEC §3.2): Bradley–Terry, Bradley–Terry with ties (Rao–Kupper), MOS regression.

    loss, stats = reward_loss("btt", r_a, r_b, y, mask, theta=5.0)

Conventions shared by every function here:

- `r_a`, `r_b` are rewards shaped [B] or [B, D] (D dimensions); `y`, `mask` have the same shape.
- `y` holds +1 (A preferred), -1 (B preferred), 0 (tie); `mask` is True where the entry is labelled.
  Unlabelled entries contribute neither to the loss nor to its gradient, whatever `y` (or the MOS) holds there.
- `Δ = r_A - r_B`; where y = -1 the pair is swapped so that Δ is "preferred minus other".
- The loss is the MASKED MEAN over every labelled (pair, dimension) entry. A batch with nothing labelled gives a
  zero that is still connected to the graph, so `backward()` works and gives zero gradients (never NaN).
- Computation is in float32 at least: bf16 rewards would lose the small margins the loss is about.
- `stats` holds plain, detached Python numbers for logging; `accuracy` is nan when no decisive entry is labelled.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["bt_loss", "btt_loss", "btt_probabilities", "regression_loss", "reward_loss"]


def _check_shapes(**tensors: torch.Tensor) -> None:
    # No broadcasting: a [B] vs [B, 1] mix-up would silently build a [B, B] loss.
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"inputs must all have the same shape, got {shapes}")


def _prepare(r_a, r_b, y, mask):
    """Validate and return (Δ_pref, y, mask): Δ_pref is 'preferred minus other', zeroed where unlabelled."""
    _check_shapes(r_a=r_a, r_b=r_b, y=y, mask=mask)
    mask = mask.to(torch.bool)
    bad = mask & (y != 1) & (y != -1) & (y != 0)
    if bool(bad.any()):
        raise ValueError(f"labels must be +1, -1 or 0 where mask is True, got {torch.unique(y[bad]).tolist()}")
    dtype = torch.promote_types(r_a.dtype, torch.float32)
    delta = r_a.to(dtype) - r_b.to(dtype)
    delta = torch.where(y == -1, -delta, delta)  # swap so Δ = preferred - other
    # Zero the unlabelled entries BEFORE the loss: a NaN/inf there would otherwise leak into the
    # gradient (0 * nan = nan) even though the loss value masks it out.
    delta = torch.where(mask, delta, torch.zeros_like(delta))
    return delta, y, mask


def _masked_mean(values: torch.Tensor, keep: torch.Tensor, weights=None) -> torch.Tensor:
    """Σ_{keep} w·values / Σ_{keep} w (w = 1 without `weights`; `weights` [D] weighs dimension columns); a
    graph-connected zero when nothing is kept."""
    w = (
        torch.ones_like(values)
        if weights is None
        else torch.as_tensor(weights, dtype=values.dtype, device=values.device).expand_as(values)
    )
    w = torch.where(keep, w, torch.zeros_like(values))
    total = w.sum()
    return (torch.where(keep, values, torch.zeros_like(values)) * w).sum() / torch.where(total > 0, total, 1.0)


def _stats(delta: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, n_labelled: int) -> dict:
    decisive = mask & (y != 0)
    n_decisive = int(decisive.sum())
    # After the swap, sign(Δ) = y  <=>  Δ_pref > 0; Δ = 0 counts as wrong (as in SPEC §4).
    n_correct = int((decisive & (delta.detach() > 0)).sum())
    return {
        "n_labelled": n_labelled,
        "n_decisive": n_decisive,
        "n_ties": int((mask & (y == 0)).sum()),
        "accuracy": n_correct / n_decisive if n_decisive else float("nan"),
    }


def bt_loss(r_a: torch.Tensor, r_b: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, weights=None):
    """Bradley–Terry loss, ties dropped: L = -log σ(Δ), Δ = r_preferred - r_other.

    Tie entries (y = 0) are masked out, so `stats["n_labelled"]` counts decisive entries only
    (`stats["n_ties"]` says how many labelled ties were dropped). Returns (loss, stats).
    """
    delta, y, mask = _prepare(r_a, r_b, y, mask)
    keep = mask & (y != 0)
    loss = _masked_mean(-F.logsigmoid(delta), keep, weights)  # logsigmoid: stable for large |Δ|
    return loss, _stats(delta, y, mask, int(keep.sum()))


def _check_theta(theta: float) -> float:
    theta = float(theta)
    if not math.isfinite(theta) or theta <= 1.0:
        raise ValueError(f"Rao–Kupper theta must be a finite number > 1, got {theta}")
    return theta


def btt_probabilities(delta, theta: float = 5.0):
    """Rao–Kupper outcome probabilities for Δ = r_A - r_B, θ > 1.

        P(A ≻ B) = σ(Δ - ln θ),   P(B ≻ A) = σ(-Δ - ln θ),
        P(tie)   = 1 - P(A ≻ B) - P(B ≻ A) = (θ² - 1)·σ(Δ - ln θ)·σ(-Δ - ln θ).

    The product form is used for P(tie): it has no cancellation when both wins are likely small.
    Returns (p_a, p_b, p_tie) as tensors shaped like `delta`.
    """
    theta = _check_theta(theta)
    delta = torch.as_tensor(delta)
    if not delta.is_floating_point():
        delta = delta.to(torch.float32)
    log_theta = math.log(theta)
    p_a = torch.sigmoid(delta - log_theta)
    p_b = torch.sigmoid(-delta - log_theta)
    p_tie = (theta * theta - 1.0) * p_a * p_b
    return p_a, p_b, p_tie


def btt_loss(
    r_a: torch.Tensor, r_b: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, theta: float = 5.0, weights=None
):
    """Bradley–Terry with ties (Rao–Kupper), θ > 1; the negative log-likelihood of `btt_probabilities`.

        win (after the swap): L = -log σ(Δ - ln θ)                                 = -log P(preferred ≻ other)
        tie:                  L = -log σ(Δ - ln θ) - log σ(-Δ - ln θ) - ln(θ² - 1)  = -log P(tie)

    Raises ValueError unless θ > 1 (at θ = 1 a tie has probability 0). Returns (loss, stats).
    """
    theta = _check_theta(theta)
    delta, y, mask = _prepare(r_a, r_b, y, mask)
    log_theta = math.log(theta)
    # log(θ²-1) as log(θ-1) + log(θ+1): accurate for θ just above 1.
    log_tie_const = math.log(theta - 1.0) + math.log(theta + 1.0)
    win = -F.logsigmoid(delta - log_theta)
    tie = -F.logsigmoid(delta - log_theta) - F.logsigmoid(-delta - log_theta) - log_tie_const
    loss = _masked_mean(torch.where(y == 0, tie, win), mask, weights)
    return loss, _stats(delta, y, mask, int(mask.sum()))


def regression_loss(r: torch.Tensor, mos: torch.Tensor, mask: torch.Tensor, weights=None):
    """Pointwise MOS regression: L = (r - (MOS - 3))², a 1–5 score centred on 0. Returns (loss, stats).

    `stats`: `n_labelled` and `mae` (mean |r - (MOS - 3)| over labelled entries, nan if none).
    """
    _check_shapes(r=r, mos=mos, mask=mask)
    mask = mask.to(torch.bool)
    dtype = torch.promote_types(r.dtype, torch.float32)
    target = torch.where(mask, mos.to(dtype) - 3.0, torch.zeros((), dtype=dtype))  # unlabelled MOS may be NaN
    err = torch.where(mask, r.to(dtype) - target, torch.zeros((), dtype=dtype))
    loss = _masked_mean(err * err, mask, weights)
    n = int(mask.sum())
    mae = float(err.detach().abs().sum()) / n if n else float("nan")
    return loss, {"n_labelled": n, "mae": mae}


def reward_loss(
    kind: str,
    r_a: torch.Tensor,
    r_b: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    theta: float = 5.0,
    weights=None,
):
    """Dispatch to `bt_loss` ("bt", θ unused) or `btt_loss` ("btt"). Returns (loss, stats).

    `weights` ([D], optional) weigh the dimensions' columns in the masked mean: Σ w_d·L / Σ w_d over labelled
    entries, so equal weights (or None) give the plain masked mean."""
    if kind == "bt":
        return bt_loss(r_a, r_b, y, mask, weights=weights)
    if kind == "btt":
        return btt_loss(r_a, r_b, y, mask, theta=theta, weights=weights)
    raise ValueError(f"unknown reward loss {kind!r}; expected 'bt' or 'btt'")
