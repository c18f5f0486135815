"""The tiny Wan generator through the real diffusers classes: load by path, latents round trip, LoRA with the
disabled-adapter reference (exact), Flow-DPO = log 2 at initialisation on real errors, LoRA weights loadable
with WanPipeline.load_lora_weights."""

import numpy as np
import pytest
import torch

from raypipe.flow.family import WanFamily
from raypipe.flow.lora import add_lora, lora_parameters, reference, save_lora
from raypipe.flow.losses import LOG2, beta_t, dpo_loss, flow_error, noised, sample_t
from raypipe.flow.wan_build import TinyWanConfig, make_tiny_wan
from tests.conftest import moving_square_frames


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory):
    return make_tiny_wan(tmp_path_factory.mktemp("wan") / "tiny-wan", TinyWanConfig(), seed=0)


def _batch(gen, n=2):
    frames = np.stack([moving_square_frames(t=gen.frames_for(9), h=32, w=32, seed=i) for i in range(n)])
    return gen.encode_videos(frames), gen.encode_prompts(["a red square moving right"] * n)


def test_loads_by_path_and_shapes(tiny_wan, tmp_path):
    gen = WanFamily.load(tiny_wan)
    assert gen.frames_for(16) == 15 and gen.frames_for(9) == 9
    z, text = _batch(gen)
    assert z.shape == (2, 4, 5, 8, 8) and text.shape == (2, 16, 32)
    t = torch.tensor([0.3, 0.9])
    assert gen.velocity(z, t, text).shape == z.shape
    assert gen.decode_latents(z).shape == (2, 9, 32, 32, 3)
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        WanFamily.load(tmp_path)


def test_lora_reference_dpo_at_init_and_diffusers_loading(tiny_wan, tmp_path):
    gen = WanFamily.load(tiny_wan)
    z, text = _batch(gen, 4)
    with torch.no_grad():
        base = gen.velocity(z, torch.full((4,), 0.5), text)
    add_lora(gen.transformer, r=4, alpha=8, targets=gen.lora_targets)
    params = lora_parameters(gen.transformer)
    assert params and all(p.requires_grad for p in params)
    assert all(not p.requires_grad for n, p in gen.transformer.named_parameters() if "lora_" not in n)

    # Flow-DPO on real errors: winners = first two, losers = last two, ONE eps and ONE t per pair.
    g = torch.Generator().manual_seed(0)
    t = sample_t(2, g, shift=gen.shift)
    eps = torch.randn(z[:2].shape, generator=g)
    errs = {}
    for side, x0 in (("w", z[:2]), ("l", z[2:])):
        xt, v = noised(x0, eps, t)
        errs[side] = flow_error(gen.velocity(xt, t, text[:2]), v)
        with reference(gen.transformer):
            errs["ref_" + side] = flow_error(gen.velocity(xt, t, text[:2]), v)
    loss, _ = dpo_loss(errs["w"], errs["ref_w"], errs["l"], errs["ref_l"], beta_t(500, t))
    assert loss.item() == pytest.approx(LOG2, abs=1e-6)  # policy == reference at init (LoRA B = 0)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)

    with torch.no_grad():  # move the adapters: the policy changes, the reference stays the base model exactly
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
        tuned = gen.velocity(z, torch.full((4,), 0.5), text)
        with reference(gen.transformer):
            ref = gen.velocity(z, torch.full((4,), 0.5), text)
    assert (tuned - base).abs().max() > 1e-4
    assert torch.equal(ref, base)

    save_lora(gen, tmp_path / "lora")
    fresh = WanFamily.load(tiny_wan)
    fresh.pipeline.load_lora_weights(str(tmp_path / "lora"))
    with torch.no_grad():
        loaded = fresh.velocity(z, torch.full((4,), 0.5), text)
    torch.testing.assert_close(loaded, tuned, atol=1e-5, rtol=1e-4)


def test_reference_of_other_adapters_matches_a_model_holding_them(tiny_wan):
    """set_reference: `reference` runs the model with another LoRA state (online DPO's policy of N rounds ago). Its
    velocity equals a second model loaded with those adapters, and a policy forward taken before the swap still
    backpropagates to the same gradients as without any reference pass."""
    from peft.utils import get_peft_model_state_dict

    from raypipe.flow.lora import ADAPTER, set_reference

    torch.manual_seed(0)
    policy, other = WanFamily.load(tiny_wan), WanFamily.load(tiny_wan)
    for gen in (policy, other):
        add_lora(gen.transformer, r=4, alpha=8, targets=gen.lora_targets)
    with torch.no_grad():
        for p in lora_parameters(policy.transformer):
            p.add_(0.05 * torch.randn_like(p))
        for p in lora_parameters(other.transformer):
            p.add_(0.05 * torch.randn_like(p))
    old = {k: v.clone() for k, v in get_peft_model_state_dict(other.transformer, adapter_name=ADAPTER).items()}
    z, text = _batch(policy, 2)
    t = torch.tensor([0.3, 0.8])

    def grads(with_reference: bool):
        for p in lora_parameters(policy.transformer):
            p.grad = None
        v = policy.velocity(z, t, text)
        ref = None
        if with_reference:
            with reference(policy.transformer):
                ref = policy.velocity(z, t, text)
        v.square().mean().backward()
        return v.detach(), ref, [p.grad.clone() for p in lora_parameters(policy.transformer)]

    v0, _, g0 = grads(False)
    set_reference(policy.transformer, old)
    v1, ref, g1 = grads(True)
    with torch.no_grad():
        expected = other.velocity(z, t, text)
    torch.testing.assert_close(ref, expected, rtol=1e-5, atol=1e-6)  # the reference = the other adapters
    assert (ref - v1).abs().max() > 1e-4  # ... which differ from the policy's
    torch.testing.assert_close(v1, v0)
    for a, b in zip(g0, g1):  # the policy's own weights were put back before its backward
        torch.testing.assert_close(a, b)
    set_reference(policy.transformer, None)
    policy.transformer.disable_adapters()
    with torch.no_grad():
        base = policy.velocity(z, t, text)
    policy.transformer.enable_adapters()
    with reference(policy.transformer):
        torch.testing.assert_close(policy.velocity(z, t, text), base)  # None: the base again
    with pytest.raises(KeyError, match="lack"):
        set_reference(policy.transformer, {k + "x": v for k, v in old.items()})
