"""Wan2.2 through the real diffusers classes (tiny random configs): A14B's two experts switched at the boundary as
`WanPipeline` switches them, LoRA on both or one expert (round trip through the pipeline's own loader, into
`transformer_2` too), the disabled-adapter reference on both, t drawn where the trained expert works; TI2V's
residual, patchified VAE and per-token timesteps; Flow-DPO = log 2 at init; the flow target against the scheduler."""

import numpy as np
import pytest
import torch

from raypipe.flow.family import WanFamily
from raypipe.flow.lora import add_lora, load_lora, lora_parameters, reference, save_lora
from raypipe.flow.losses import LOG2, beta_t, dpo_loss, flow_error, noised, sample_t
from raypipe.flow.wan22 import LOW_NOISE_WEIGHTS, WanExperts
from raypipe.flow.wan_build import TinyWanConfig, make_tiny_wan
from tests.conftest import moving_square_frames


@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
    return make_tiny_wan(tmp_path_factory.mktemp("a14b") / "wan22-a14b", TinyWanConfig.wan22_a14b_tiny(), seed=0)


@pytest.fixture(scope="module")
def ti2v(tmp_path_factory):
    return make_tiny_wan(tmp_path_factory.mktemp("ti2v") / "wan22-ti2v", TinyWanConfig.wan22_ti2v_tiny(), seed=0)


def _inputs(gen, n=4):
    z = torch.randn(n, *gen.latent_shape(9, 32, 32), generator=torch.Generator().manual_seed(0))
    return z, gen.encode_prompts(["a red square moving right"] * n)


def test_a14b_switches_experts_at_the_boundary_like_the_pipeline(a14b):
    gen = WanFamily.load(a14b)
    assert isinstance(gen.transformer, WanExperts) and gen.transformer.boundary == 0.875
    z, text = _inputs(gen)
    t = torch.tensor([0.95, 0.2, 0.875, 0.5])  # 0.875 is the boundary itself: the pipeline's `t >= boundary`
    with torch.no_grad():
        v = gen.velocity(z, t, text)
        high = gen.pipeline.transformer(z, 1000 * t, text, return_dict=False)[0]
        low = gen.pipeline.transformer_2(z, 1000 * t, text, return_dict=False)[0]
    assert (high - low).abs().max() > 0.1  # the experts differ, so a wrong switch shows
    expected = torch.where(torch.tensor([True, False, True, False]).view(-1, 1, 1, 1, 1), high, low)
    torch.testing.assert_close(v, expected, rtol=1e-5, atol=1e-5)
    # the switch rule is the pipeline's: boundary_ratio · num_train_timesteps on the scheduler's timesteps
    steps = 1000 * t
    pipeline_high = steps >= gen.pipeline.config.boundary_ratio * gen.pipeline.scheduler.config.num_train_timesteps
    assert gen.transformer.expert_of(steps).tolist() == pipeline_high.tolist()


def test_a14b_lora_on_both_experts_round_trips_through_the_pipeline_loader(a14b, tmp_path):
    gen = WanFamily.load(a14b)
    z, text = _inputs(gen)
    t = torch.tensor([0.95, 0.2, 0.9, 0.5])
    with torch.no_grad():
        base = gen.velocity(z, t, text)
    add_lora(gen.transformer, r=4, alpha=8, targets=gen.lora_targets)
    params = lora_parameters(gen.transformer)
    assert len(params) == 2 * len(lora_parameters(gen.pipeline.transformer)) > 0  # both experts carry adapters
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
        tuned = gen.velocity(z, t, text)
        with reference(gen.transformer):
            torch.testing.assert_close(gen.velocity(z, t, text), base)  # adapters off on both experts
    assert ((tuned - base).abs().amax(dim=(1, 2, 3, 4)) > 1e-3).all()  # both sides of the boundary moved
    save_lora(gen, tmp_path / "lora")
    assert (tmp_path / "lora" / "pytorch_lora_weights.safetensors").exists()
    assert (tmp_path / "lora" / LOW_NOISE_WEIGHTS).exists()
    fresh = WanFamily.load(a14b)
    load_lora(fresh.pipeline, tmp_path / "lora")  # diffusers' load_lora_weights, transformer_2 included
    with torch.no_grad():
        torch.testing.assert_close(fresh.velocity(z, t, text), tuned, rtol=1e-5, atol=1e-6)


def test_a14b_one_expert_trained_and_t_drawn_where_it_works(a14b, tmp_path):
    gen = WanFamily.load(a14b)
    add_lora(gen.transformer, r=4, alpha=8, targets=gen.lora_targets, experts="low")
    assert gen.transformer.t_range == (0.0, 0.875)
    assert lora_parameters(gen.pipeline.transformer) == [] and lora_parameters(gen.pipeline.transformer_2)
    z, text = _inputs(gen, 2)
    with torch.no_grad():
        for p in lora_parameters(gen.transformer):
            p.add_(0.05 * torch.randn_like(p))
        t = torch.tensor([0.95, 0.3])
        tuned = gen.velocity(z, t, text)
        with reference(gen.transformer):
            ref = gen.velocity(z, t, text)
    assert (tuned[0] - ref[0]).abs().max() == 0 and (tuned[1] - ref[1]).abs().max() > 1e-3  # only low noise moved
    # t for the low-noise expert: the shifted logit-normal conditioned on t < 0.875 (compared with rejection)
    drawn = sample_t(20_000, torch.Generator().manual_seed(0), gen.shift, t_range=gen.transformer.t_range)
    plain = sample_t(200_000, torch.Generator().manual_seed(1), gen.shift)
    kept = plain[plain < 0.875]
    assert float(drawn.max()) < 0.875 and float(drawn.min()) >= 0.0
    q = [0.1, 0.25, 0.5, 0.75, 0.9]
    np.testing.assert_allclose(np.quantile(drawn.numpy(), q), np.quantile(kept.numpy(), q), atol=0.01)
    wan21 = WanFamily.load(make_tiny_wan(tmp_path / "wan21", TinyWanConfig(), seed=0))
    with pytest.raises(ValueError, match="has one"):  # a one-transformer Wan has no experts to choose
        add_lora(wan21.transformer, experts="low")


def test_ti2v_vae_patches_and_dpo_at_init(ti2v):
    gen = WanFamily.load(ti2v)
    assert gen.spatial == 8 and gen.pipeline.config.expand_timesteps  # 2x2 pixel patches x two downsamples
    frames = np.stack([moving_square_frames(t=gen.frames_for(9), h=32, w=32, seed=i) for i in range(4)])
    z = gen.encode_videos(frames)
    assert tuple(z.shape[1:]) == gen.latent_shape(9, 32, 32) == (6, 5, 4, 4)
    assert gen.decode_latents(z).shape == (4, 9, 32, 32, 3)
    text = gen.encode_prompts(["a red square moving right"] * 4)
    with torch.no_grad():  # TI2V's per-token timesteps (all equal for text-to-video) = one timestep per sample
        t = torch.tensor([0.3, 0.8, 0.5, 0.1])
        tokens = z.shape[2] * (z.shape[3] // 2) * (z.shape[4] // 2)
        per_token = gen.transformer(z, (1000 * t)[:, None].expand(-1, tokens), text, return_dict=False)[0]
        torch.testing.assert_close(gen.velocity(z, t, text), per_token, rtol=1e-4, atol=1e-5)
    add_lora(gen.transformer, r=4, alpha=8, targets=gen.lora_targets)
    g = torch.Generator().manual_seed(0)
    tt = sample_t(2, g, shift=gen.shift)
    eps = torch.randn(z[:2].shape, generator=g)
    errs = {}
    for side, x0 in (("w", z[:2]), ("l", z[2:])):
        xt, v = noised(x0, eps, tt)
        errs[side] = flow_error(gen.velocity(xt, tt, text[:2]), v)
        with reference(gen.transformer):
            errs["ref_" + side] = flow_error(gen.velocity(xt, tt, text[:2]), v)
    loss, _ = dpo_loss(errs["w"], errs["ref_w"], errs["l"], errs["ref_l"], beta_t(500, tt))
    assert loss.item() == pytest.approx(LOG2, abs=1e-6)  # policy == reference at init (LoRA B = 0)


@pytest.mark.parametrize("fixture", ["a14b", "ti2v"])
def test_flow_target_matches_the_schedulers_euler_step(fixture, request):
    """x_t = (1 − t)·x0 + t·ε with target v = ε − x0: the scheduler's own `scale_noise` gives the same x_t, and its
    Euler `step` with the exact v lands on x_{t'} of the same line."""
    gen = WanFamily.load(request.getfixturevalue(fixture))
    scheduler = gen.pipeline.scheduler
    scheduler.set_timesteps(10)
    x0 = torch.randn(1, *gen.latent_shape(9, 32, 32), generator=torch.Generator().manual_seed(1))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    i = 3
    sigma, sigma_next = float(scheduler.sigmas[i]), float(scheduler.sigmas[i + 1])
    x_t, v = noised(x0, eps, torch.tensor([sigma]))
    torch.testing.assert_close(scheduler.scale_noise(x0, scheduler.timesteps[i : i + 1], eps), x_t)
    stepped = scheduler.step(v, scheduler.timesteps[i], x_t, return_dict=False)[0]
    x_next, _ = noised(x0, eps, torch.tensor([sigma_next]))
    torch.testing.assert_close(stepped, x_next, rtol=1e-5, atol=1e-5)


def test_grpo_trains_only_the_steps_of_the_trained_expert(a14b):
    from raypipe.flow.online import grpo_items
    from raypipe.flow.sampler import time_grid
    from raypipe.flow.wan22 import trained_steps

    gen = WanFamily.load(a14b)
    grid = time_grid(8, gen.shift)[:-1]  # the times the 8 transitions start at
    assert trained_steps(gen.transformer, grid) is None  # both experts trained: every step
    gen.transformer.select(("low",))
    low = trained_steps(gen.transformer, grid)
    assert low == [j for j in range(8) if float(grid[j]) < 0.875] and 0 < len(low) < 8
    gen.transformer.select(("high",))
    assert trained_steps(gen.transformer, grid) == [j for j in range(8) if j not in low]
    ok = np.array([True, False, True])
    items = grpo_items(ok, 8, 0.5, torch.Generator().manual_seed(0), allowed=low)
    assert {i for i, _ in items} == {0, 2} and all(j in low for _, j in items)
    assert len(items) == 2 * min(4, len(low))  # four steps per sample, at most the allowed ones


def test_training_both_experts_every_step_reaches_both():
    """With both experts trained, a batch wholly on one side still runs the other expert (on one sample, times 0):
    the output is the one expert's, and every LoRA parameter of both gets a gradient (zeros for the idle one) — the
    same gradients in the same order on every rank, as ZeRO-2's bucketed reduction needs."""
    from raypipe.flow.wan_build import build_random_wan

    cfg = TinyWanConfig.wan22_a14b_tiny()
    gen = WanFamily(build_random_wan(cfg, seed=0), max_text_len=cfg.max_text_len, shift=cfg.shift)
    z, text = _inputs(gen, 2)
    t = torch.tensor([0.95, 0.9])  # both high-noise
    with torch.no_grad():
        expected = gen.pipeline.transformer(z, 1000 * t, text, return_dict=False)[0]
    add_lora(gen.transformer, r=4, alpha=8, targets=gen.lora_targets)
    out = gen.velocity(z, t, text)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.square().mean().backward()
    high, low = lora_parameters(gen.pipeline.transformer), lora_parameters(gen.pipeline.transformer_2)
    assert all(p.grad is not None for p in high + low)
    assert all(float(p.grad.abs().max()) == 0.0 for p in low)
    assert any(float(p.grad.abs().max()) > 0.0 for p in high)


def test_the_shift_of_wan_ais_own_scheduler_config():
    """Wan-AI's Diffusers folders ship UniPCMultistepScheduler with `flow_shift` (no `shift`): that is the shift."""
    from diffusers import UniPCMultistepScheduler

    from raypipe.flow.common import scheduler_shift
    from raypipe.flow.wan_build import build_random_wan

    pipe = build_random_wan(TinyWanConfig(), seed=0)
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    assert WanFamily(pipe).shift == 5.0
    assert scheduler_shift({"shift": 3.0}) == 3.0 and scheduler_shift({}) == 1.0


def test_under_zero3_every_forward_runs_both_experts(a14b):
    """ZeRO-3 gathers each expert's partitioned weights with collectives every rank must join, so a forward whose
    samples all belong to one expert (the reference pass under no_grad included) still runs the other on one sample
    and adds 0 x its output (without it a two-expert train-flow with train.zero_stage=3 aborted in gloo: a
    collective mismatch)."""
    gen = WanFamily.load(a14b)
    experts = gen.transformer
    z, text = _inputs(gen, 2)
    t = torch.full((2,), 0.95)  # both samples: the high-noise expert's
    calls = []
    hooks = [
        expert.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
        for name, expert in (("high", experts.high), ("low", experts.low))
    ]
    with torch.no_grad():
        plain = gen.velocity(z, t, text)
        assert calls == ["high"]
        next(experts.high.parameters()).ds_id = 0  # what DeepSpeed's ZeRO-3 marks a partitioned parameter with
        try:
            calls.clear()
            assert experts.partitioned()
            torch.testing.assert_close(gen.velocity(z, t, text), plain)
            assert sorted(calls) == ["high", "low"]
        finally:
            del next(experts.high.parameters()).ds_id
    for h in hooks:
        h.remove()
