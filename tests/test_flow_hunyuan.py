"""HunyuanVideo 1.0 through the real diffusers classes (a tiny random config): the folder names its family, shapes
through encode → velocity → decode, the packed prompt (Llama states + mask + CLIP pooled) round-trips and its mask
reaches the transformer, the embedded guidance acts, Flow-DPO = log 2 at init, LoRA round trip through
`HunyuanVideoPipeline.load_lora_weights`, the flow target against the scheduler's Euler step."""

import numpy as np
import pytest
import torch

from raypipe.flow.families import family_of, load_family
from raypipe.flow.hunyuan import HunyuanFamily, TinyHunyuanConfig, make_tiny_hunyuan, pack_text, unpack_text
from raypipe.flow.lora import add_lora, lora_parameters
from raypipe.flow.losses import noised
from tests.conftest import moving_square_frames
from tests.family_checks import dpo_at_init, lora_round_trip


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
    t, errs = dpo_at_init(gen, z, text)
    # diffusers' HunyuanVideoPipeline.load_lora_weights
    lora_round_trip(gen, HunyuanFamily.load(tiny_hunyuan), tmp_path / "lora", z[:2], t, text)


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
