"""Checks every generator family's test runs the same way (tests/test_flow_*.py): Flow-DPO is log 2 at init, and
LoRA weights saved by `save_lora` come back through the family's own pipeline loader."""

from __future__ import annotations

import pytest
import torch

from raypipe.flow.lora import lora_parameters, reference, save_lora
from raypipe.flow.losses import LOG2, beta_t, dpo_loss, flow_error, noised, sample_t


def dpo_at_init(gen, z: torch.Tensor, text: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """With fresh adapters on gen.transformer (B = 0: policy = reference), the SPEC §5.1 loss on winners z[:n] and
    losers z[n:] (one eps and t per pair) is log 2. Returns the pair times and the four flow errors."""
    n = z.shape[0] // 2
    g = torch.Generator().manual_seed(seed)
    t = sample_t(n, g, shift=gen.shift)
    eps = torch.randn(z[:n].shape, generator=g)
    errs = {}
    for side, x0 in (("w", z[:n]), ("l", z[n:])):
        xt, v = noised(x0, eps, t)
        errs[side] = flow_error(gen.velocity(xt, t, text), v)
        with reference(gen.transformer):
            errs["ref_" + side] = flow_error(gen.velocity(xt, t, text), v)
    loss, _ = dpo_loss(errs["w"], errs["ref_w"], errs["l"], errs["ref_l"], beta_t(500, t))
    assert loss.item() == pytest.approx(LOG2, abs=1e-6)  # policy == reference at init (LoRA B = 0)
    return t, errs


def lora_round_trip(gen, fresh, path, z: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> None:
    """Perturbed adapters change the velocity; saved with `save_lora` and loaded into `fresh` (the same folder, no
    adapters) through `load_lora` (the pipeline's own loader), they give the same velocity."""
    from raypipe.flow.lora import load_lora

    with torch.no_grad():
        for p in lora_parameters(gen.transformer):
            p.add_(0.05 * torch.randn_like(p))
        tuned = gen.velocity(z, t, text)
        with reference(gen.transformer):
            base = gen.velocity(z, t, text)
    assert (tuned - base).abs().max() > 1e-4
    save_lora(gen, path)
    load_lora(fresh.pipeline, path)
    with torch.no_grad():
        torch.testing.assert_close(fresh.velocity(z, t, text), tuned, rtol=1e-5, atol=1e-6)
