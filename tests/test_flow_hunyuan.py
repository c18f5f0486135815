"""HunyuanVideo 1.0 through the real diffusers classes (a tiny random config): the folder names its family, shapes
through encode → velocity → decode, the packed prompt (Llama states + mask + CLIP pooled) round-trips and its mask
reaches the transformer, the embedded guidance acts, Flow-DPO = log 2 at init, LoRA round trip through
`HunyuanVideoPipeline.load_lora_weights`, the flow target against the scheduler's Euler step."""

import numpy as np
import pytest
import torch

from raypipe.flow.families import family_of, load_family
from raypipe.flow.hunyuan import HunyuanFamily, TinyHunyuanConfig, make_tiny_hunyuan, pack_text, unpack_text
from raypipe.flow.lora import add_lora, load_lora, lora_parameters, reference, save_lora
from raypipe.flow.losses import LOG2, beta_t, dpo_loss, flow_error, noised, sample_t
from tests.conftest import moving_square_frames


@pytest.fixture(scope="module")
def tiny_hunyuan(tmp_path_factory):
    return make_tiny_hunyuan(tmp_path_factory.mktemp("hy") / "hunyuan", TinyHunyuanConfig(), seed=0)


def test_loads_by_path_and_shapes(tiny_hunyuan):
    assert family_of(tiny_hunyuan) == "hunyuan"
    gen = load_family(tiny_hunyuan)
    assert isinstance(gen, HunyuanFamily) and gen.frames_for(9) == 9 and gen.frames_for(8) == 5
    frames = np.stack([moving_square_frames(t=9, h=32, w=32, seed=i) for i in range(2)])
    z = gen.encode_videos(frames)
    assert tuple(z.shape[1:]) == gen.latent_shape(9, 32, 32) == (4, 3, 8, 8)
    text = gen.encode_prompts(["a red square moving right", "a blue circle moving left"])
    assert text.shape == (2, 1 + 16, 32 + 1)
    v = gen.velocity(z, torch.tensor([0.3, 0.8]), text)
    assert v.shape == z.shape and torch.isfinite(v).all()
    assert gen.decode_latents(z).shape == (2, 9, 32, 32, 3)


def test_packed_prompt_round_trips_and_its_mask_and_guidance_act(tiny_hunyuan):
    gen = load_family(tiny_hunyuan)
    embeds, pooled, mask = gen.pipeline.encode_prompt(
        ["a red square moving right"], prompt_template=gen.prompt_template, max_sequence_length=16, device="cpu"
    )
    packed = pack_text(embeds, pooled, mask)
    e2, p2, m2 = unpack_text(packed, 32, 16)
    assert torch.equal(e2, embeds) and torch.equal(p2, pooled) and torch.equal(m2, mask.long())
    assert torch.equal(packed, gen.encode_prompts(["a red square moving right"]))
    n_real = int(mask.sum())
    assert 0 < n_real < 16  # padding exists: the mask matters
    z = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.5])
    with torch.no_grad():
        v = gen.velocity(z, t, packed)
        noisy_pad = packed.clone()
        noisy_pad[:, 1 + n_real :, :32] += 5.0  # change only the masked-out positions' states
        torch.testing.assert_close(gen.velocity(z, t, noisy_pad), v, rtol=1e-5, atol=1e-5)
        unmasked = packed.clone()
        unmasked[:, 1:, 32] = 1.0  # the same states, all attended
        assert (gen.velocity(z, t, unmasked) - v).abs().max() > 1e-4
        gen.guidance = 1.0  # the embedded guidance scale is an input of every forward
        assert (gen.velocity(z, t, packed) - v).abs().max() > 1e-4
    with pytest.raises(ValueError, match="encode_prompts"):
        unpack_text(torch.zeros(1, 17, 32), 32, 16)


def test_dpo_at_init_and_lora_round_trip_through_the_pipeline_loader(tiny_hunyuan, tmp_path):
    gen = load_family(tiny_hunyuan)
    frames = np.stack([moving_square_frames(t=9, h=32, w=32, seed=i) for i in range(4)])
    z = gen.encode_videos(frames)
    text = gen.encode_prompts(["a red square moving right"] * 2)
    add_lora(gen.transformer, r=4, alpha=8, targets=gen.lora_targets)
    assert lora_parameters(gen.transformer)
    g = torch.Generator().manual_seed(0)
    t = sample_t(2, g, shift=gen.shift)
    eps = torch.randn(z[:2].shape, generator=g)
    errs = {}
    for side, x0 in (("w", z[:2]), ("l", z[2:])):
        xt, v = noised(x0, eps, t)
        errs[side] = flow_error(gen.velocity(xt, t, text), v)
        with reference(gen.transformer):
            errs["ref_" + side] = flow_error(gen.velocity(xt, t, text), v)
    loss, _ = dpo_loss(errs["w"], errs["ref_w"], errs["l"], errs["ref_l"], beta_t(500, t))
    assert loss.item() == pytest.approx(LOG2, abs=1e-6)  # policy == reference at init (LoRA B = 0)
    with torch.no_grad():
        for p in lora_parameters(gen.transformer):
            p.add_(0.05 * torch.randn_like(p))
        tuned = gen.velocity(z[:2], t, text)
    save_lora(gen, tmp_path / "lora")
    fresh = HunyuanFamily.load(tiny_hunyuan)
    load_lora(fresh.pipeline, tmp_path / "lora")  # diffusers' HunyuanVideoPipeline.load_lora_weights
    with torch.no_grad():
        torch.testing.assert_close(fresh.velocity(z[:2], t, text), tuned, rtol=1e-5, atol=1e-6)


def test_flow_target_matches_the_schedulers_euler_step(tiny_hunyuan):
    gen = load_family(tiny_hunyuan)
    scheduler = gen.pipeline.scheduler
    scheduler.set_timesteps(10)
    x0 = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    sigma, sigma_next = float(scheduler.sigmas[3]), float(scheduler.sigmas[4])
    x_t, v = noised(x0, eps, torch.tensor([sigma]))
    torch.testing.assert_close(scheduler.scale_noise(x0, scheduler.timesteps[3:4], eps), x_t)
    stepped = scheduler.step(v, scheduler.timesteps[3], x_t, return_dict=False)[0]
    torch.testing.assert_close(stepped, noised(x0, eps, torch.tensor([sigma_next]))[0], rtol=1e-5, atol=1e-5)
