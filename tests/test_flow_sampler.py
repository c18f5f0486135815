"""Euler sampling (SPEC §1): the exact straight-line field of one data point is integrated back to it exactly;
CFG and the shifted time grid against closed forms; the tiny Wan generator samples the right shapes."""

import pytest
import torch

from raypipe.flow.sampler import sample, time_grid


def test_time_grid_closed_form():
    torch.testing.assert_close(time_grid(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    g = time_grid(4, shift=3.0)
    u = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    torch.testing.assert_close(g, 3 * u / (1 + 2 * u))
    assert g[0] == 1.0 and g[-1] == 0.0
    with pytest.raises(ValueError):
        time_grid(0)


def test_exact_field_recovers_the_data_point_for_any_grid():
    x0 = torch.randn(2, 3, 4)

    def field(x, t, text):  # x_t = (1-t)·x0 + t·eps  =>  v = eps - x0 = (x_t - x0) / t
        return (x - x0) / t.view(-1, 1, 1)

    for steps, shift in ((1, 1.0), (7, 1.0), (5, 3.0)):
        out = sample(
            field,
            torch.zeros(2, 1),
            None,
            x0.shape,
            steps=steps,
            shift=shift,
            generator=torch.Generator().manual_seed(0),
        )
        torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)


def test_cfg_combines_conditional_and_unconditional():
    seen = []

    def field(x, t, text):  # velocity = the text embedding, so v_u = 0 and v_c = 1
        seen.append(x.shape[0])
        return text.view(-1, 1).expand_as(x)

    noise = torch.zeros(1, 3)
    out = sample(field, torch.ones(1, 1), torch.zeros(1, 1), (1, 3), steps=4, cfg_scale=5.0, noise=noise)
    torch.testing.assert_close(out, torch.full((1, 3), -5.0))  # x = 0 - Σ Δ·5 over t ∈ [1, 0]
    assert seen == [2] * 4  # conditional and unconditional in one batched call per step
    out = sample(field, torch.ones(1, 1), torch.zeros(1, 1), (1, 3), steps=4, cfg_scale=1.0, noise=noise)
    torch.testing.assert_close(out, torch.full((1, 3), -1.0))


def test_guidance_hook_is_applied():
    out = sample(
        lambda x, t, c: torch.zeros_like(x),
        torch.zeros(1, 1),
        None,
        (1, 2),
        steps=2,
        noise=torch.zeros(1, 2),
        guidance=lambda x, t, v: v + 1.0,
    )
    torch.testing.assert_close(out, torch.full((1, 2), -1.0))


def test_tiny_wan_samples(tmp_path):
    from raypipe.flow.family import WanFamily
    from raypipe.flow.wan_build import make_tiny_wan

    gen = WanFamily.load(make_tiny_wan(tmp_path / "wan"))
    text = gen.encode_prompts(["a red circle moving left", "a blue square moving up"])
    uncond = gen.encode_prompts([""])
    z = sample(
        gen.velocity,
        text,
        uncond,
        (2, 4, 3, 8, 8),
        steps=3,
        cfg_scale=4.0,
        shift=gen.shift,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(z).all()
    assert gen.decode_latents(z).shape == (2, 5, 32, 32, 3)
