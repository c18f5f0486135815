"""HunyuanVideo 1.5 T2V through the real diffusers classes (a tiny random config): the folder names its family,
shapes through encode → velocity → decode (the VAE by hand), the transformer's inputs as HunyuanVideo15Pipeline
builds them (by hand from its own prepare_latents / prepare_cond_latents_and_mask / encode_prompt, and inside its
__call__, whose CFG sampling our sampler reproduces), the packed prompt (Qwen states + ByT5 glyph states + masks)
round-trips and both masks reach the transformer, Flow-DPO = log 2 at init, LoRA round trip through the
transformer's own `load_lora_adapter` (diffusers has no LoRA loader for this pipeline), the flow target against the
scheduler's Euler step."""

import json
import shutil

import numpy as np
import pytest
import torch

from raypipe.flow.conditioning import empty_prompt_like, encode_with_images
from raypipe.flow.families import family_of, load_family, make_tiny_generator, takes_image
from raypipe.flow.hunyuan15 import Hunyuan15Family, TinyHunyuan15Config, pack_text, unpack_text
from raypipe.flow.lora import add_lora, lora_parameters
from raypipe.flow.losses import noised
from raypipe.flow.sampler import sample
from tests.conftest import moving_square_frames
from tests.family_checks import dpo_at_init, lora_round_trip

PROMPTS = ["a red square moving right", 'a sign that says "stop"']  # the second quotes a glyph text for ByT5
ROWS, WIDTH = 16 + 16, 32 + 1  # Qwen tokens + ByT5 bytes; Qwen width + the mask channel


@pytest.fixture(scope="module")
def tiny_hy15(tmp_path_factory):
    return make_tiny_generator("hunyuan15", tmp_path_factory.mktemp("hy15") / "hunyuan15", seed=0)


def test_loads_by_path_and_shapes(tiny_hy15, tmp_path):
    assert family_of(tiny_hy15) == "hunyuan15" and not takes_image(tiny_hy15)
    bare = tmp_path / "bare"  # a downloaded folder has no raypipe_family.json: the pipeline class names the family
    bare.mkdir()
    shutil.copy(tiny_hy15 / "model_index.json", bare)
    assert family_of(bare) == "hunyuan15"
    gen = load_family(tiny_hy15)
    assert isinstance(gen, Hunyuan15Family) and gen.frames_for(9) == 9 and gen.frames_for(8) == 5
    assert (gen.max_text_len, gen.max_glyph_len, gen.pipeline.prompt_template_encode_start_idx) == (16, 16, 0)
    frames = np.stack([moving_square_frames(t=9, h=32, w=32, seed=i) for i in range(2)])
    z = gen.encode_videos(frames)
    assert tuple(z.shape[1:]) == gen.latent_shape(9, 32, 32, check=True) == (4, 3, 8, 8)
    vae = gen.pipeline.vae  # the second video by hand: the VAE's mode x scaling_factor, as the I2V pipeline encodes
    pixels = torch.from_numpy(frames[1:]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    with torch.no_grad():
        by_hand = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
        torch.testing.assert_close(z[1:], by_hand, rtol=1e-5, atol=1e-5)
        decoded = vae.decode(z[1:] / vae.config.scaling_factor).sample  # as the pipeline decodes
    text = gen.encode_prompts(PROMPTS)
    assert text.shape == (2, ROWS, WIDTH)
    v = gen.velocity(z, torch.tensor([0.3, 0.8]), text)
    assert v.shape == z.shape and torch.isfinite(v).all()
    out = gen.decode_latents(z)
    assert out.shape == (2, 9, 32, 32, 3)
    expected = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    assert np.abs(out[1:].astype(int) - expected.astype(int)).max() <= 1
    from raypipe.config import ConfigError

    with pytest.raises(ConfigError, match="multiples of 4"):
        gen.latent_shape(9, 30, 32, check=True)
    with pytest.raises(ValueError, match="text-to-video only"):
        encode_with_images(gen, PROMPTS, frames[:, 0])
    # a folder without our settings keeps the installed pipeline's own prompt handling (chat template crop, lengths)
    plain = Hunyuan15Family(gen.pipeline.__class__(**gen.pipeline.components))
    assert (plain.max_text_len, plain.max_glyph_len, plain.image_tokens) == (1000, 256, 729)
    assert plain.pipeline.prompt_template_encode_start_idx == 108 and plain.crop_start is None
    gen.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "raypipe_family.json").read_text())
    assert saved == {"family": "hunyuan15", "max_text_len": 16, "max_glyph_len": 16, "shift": 5.0, "crop_start": 0}


def _pipeline_inputs(pipe, prompts, sigma_index: int, dtype=torch.float32):
    """The transformer's keyword inputs as HunyuanVideo15Pipeline.__call__ builds them at one step (T2V)."""
    n = len(prompts)
    embeds, mask, embeds_2, mask_2 = pipe.encode_prompt(prompt=prompts, device="cpu", dtype=dtype, batch_size=n)
    g = torch.Generator().manual_seed(3)
    latents = pipe.prepare_latents(n, pipe.num_channels_latents, 32, 32, 9, dtype, "cpu", g)
    cond, cond_mask = pipe.prepare_cond_latents_and_mask(latents, dtype, "cpu")
    pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, 5 + 1)[:-1], device="cpu")
    t = pipe.scheduler.timesteps[sigma_index]
    kwargs = {
        "hidden_states": torch.cat([latents, cond, cond_mask], dim=1),
        "image_embeds": torch.zeros(n, pipe.vision_num_semantic_tokens, pipe.vision_states_dim, dtype=dtype),
        "timestep": t.expand(n).to(dtype),
        "encoder_hidden_states": embeds,
        "encoder_attention_mask": mask,
        "encoder_hidden_states_2": embeds_2,
        "encoder_attention_mask_2": mask_2,
    }
    return kwargs, latents, pipe.scheduler.sigmas[sigma_index].expand(n)


def test_velocity_is_the_transformer_called_as_the_pipeline_calls_it(tiny_hy15):
    gen = load_family(tiny_hy15)
    pipe = gen.pipeline
    kwargs, latents, sigma = _pipeline_inputs(pipe, PROMPTS, sigma_index=2)
    assert kwargs["hidden_states"].shape[1] == 9 and not kwargs["hidden_states"][:, 4:].any()  # T2V: zeros
    assert float(kwargs["encoder_attention_mask_2"][0].sum()) == 0 < float(kwargs["encoder_attention_mask_2"][1].sum())
    with torch.no_grad():
        expected = pipe.transformer(**kwargs, return_dict=False)[0]
        got = gen.velocity(latents, sigma, gen.encode_prompts(PROMPTS))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert expected.abs().mean() > 1e-3  # a real output, not zeros on both sides

    # bf16: the pipeline casts the timestep (and everything else) to the transformer's dtype; so does velocity
    gen16 = Hunyuan15Family.load(tiny_hy15, dtype="bfloat16")
    kwargs16, latents16, _ = _pipeline_inputs(gen16.pipeline, PROMPTS, sigma_index=2, dtype=torch.bfloat16)
    with torch.no_grad():
        expected16 = gen16.transformer(**kwargs16, return_dict=False)[0].float()
        got16 = gen16.velocity(latents16.float(), sigma, gen16.encode_prompts(PROMPTS))
    assert got16.dtype == torch.float32 and torch.isfinite(got16).all()
    torch.testing.assert_close(got16, expected16, rtol=0, atol=0)


def test_the_pipelines_own_cfg_sampling_is_our_sampler_on_velocity(tiny_hy15):
    """HunyuanVideo15Pipeline.__call__ (its guider's CFG, its scheduler) from the same noise: its first transformer
    call (the prompt) is `velocity`, its second (the empty negative prompt) is `velocity` on encode_prompts([""]),
    and its final latents are `raypipe.flow.sampler.sample` on `velocity` with the guider's scale and our shift."""
    gen = load_family(tiny_hy15)
    pipe = gen.pipeline
    noise = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    calls = []
    hook = pipe.transformer.register_forward_hook(
        lambda _m, _a, kw, out: calls.append((dict(kw), out[0].detach().clone())), with_kwargs=True
    )
    try:
        out = pipe(
            prompt=PROMPTS[1],
            height=32,
            width=32,
            num_frames=9,
            num_inference_steps=3,
            latents=noise.clone(),
            output_type="latent",
        ).frames
    finally:
        hook.remove()
    assert len(calls) == 3 * 2  # CFG: a conditional and an unconditional pass per step
    text, uncond = gen.encode_prompts(PROMPTS[1:]), gen.encode_prompts([""])
    first_kw = calls[0][0]
    assert first_kw["image_embeds"].shape == (1, 729, gen.image_dim) and not first_kw["image_embeds"].any()
    with torch.no_grad():
        torch.testing.assert_close(gen.velocity(noise, torch.ones(1), text), calls[0][1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gen.velocity(noise, torch.ones(1), uncond), calls[1][1], rtol=1e-5, atol=1e-6)
    scale = pipe.guider.guidance_scale
    ours = sample(gen.velocity, text, uncond, noise.shape, steps=3, cfg_scale=scale, shift=gen.shift, noise=noise)
    torch.testing.assert_close(ours, out, rtol=1e-4, atol=1e-5)
    assert (out - noise).abs().mean() > 1e-2  # the sampling moved


def test_packed_prompt_round_trips_and_both_masks_reach_the_transformer(tiny_hy15):
    gen = load_family(tiny_hy15)
    embeds, mask, embeds_2, mask_2 = gen.pipeline.encode_prompt(PROMPTS, device="cpu", batch_size=2)
    packed = pack_text(embeds, mask, embeds_2, mask_2)
    e, m, e2, m2 = unpack_text(packed, 32, 16, 16)
    assert torch.equal(e, embeds) and torch.equal(e2, embeds_2)
    assert torch.equal(m, mask.long()) and torch.equal(m2, mask_2.long())
    assert torch.equal(packed, gen.encode_prompts(PROMPTS))
    n_real, n_glyph = int(mask[1].sum()), int(mask_2[1].sum())
    assert 0 < n_real < 16 and 0 < n_glyph < 16  # padding in both: the masks matter
    assert not embeds_2[0].any() and int(mask_2[0].sum()) == 0  # no quoted text: zero glyph states, masked out
    z = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.5, 0.5])
    with torch.no_grad():
        v = gen.velocity(z, t, packed)
        noisy_pad = packed.clone()
        noisy_pad[1, n_real:16, :32] += 5.0  # only the masked-out Qwen positions
        noisy_pad[1, 16 + n_glyph :, :16] += 5.0  # and the masked-out ByT5 positions
        torch.testing.assert_close(gen.velocity(z, t, noisy_pad), v, rtol=1e-5, atol=1e-5)
        for rows in (slice(0, 16), slice(16, 32)):  # the same states with each mask all ones
            unmasked = packed.clone()
            unmasked[:, rows, 32] = 1.0
            assert (gen.velocity(z, t, unmasked) - v).abs().max() > 1e-4
    uncond = empty_prompt_like(gen.encode_prompts([""]), packed)  # CFG's empty prompt: same rows, any batch
    assert uncond.shape == packed.shape and int(uncond[0, :16, 32].sum()) >= 1  # the bare template keeps EOS
    with pytest.raises(ValueError, match="encode_prompts"):
        gen.velocity(z, t, torch.zeros(2, ROWS, 32))
    with pytest.raises(ValueError, match="rows"):
        gen.velocity(z, t, torch.zeros(2, ROWS + 3, WIDTH))


def test_dpo_at_init_and_lora_round_trip_through_the_transformer_loader(tiny_hy15, tmp_path):
    gen = load_family(tiny_hy15)
    assert not hasattr(gen.pipeline, "load_lora_weights")  # why save_lora / load_lora take the transformer's path
    frames = np.stack([moving_square_frames(t=9, h=32, w=32, seed=i) for i in range(4)])
    z = gen.encode_videos(frames)
    text = gen.encode_prompts(PROMPTS)
    add_lora(gen.transformer, r=4, alpha=8, targets=gen.lora_targets)
    # q/k/v/out of the one dual-stream block and of the one refiner block: 8 projections, A and B each
    assert len(lora_parameters(gen.transformer)) == 2 * 8
    t, errs = dpo_at_init(gen, z, text)
    # the transformer's PeftAdapterMixin.load_lora_adapter
    lora_round_trip(gen, Hunyuan15Family.load(tiny_hy15), tmp_path / "lora", z[:2], t, text)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "lora" / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert len(list(f.keys())) == 16 and all(k.startswith("transformer.") for k in f.keys())
        assert json.loads(f.metadata()["lora_adapter_metadata"])["transformer.lora_alpha"] == 8


def test_flow_target_matches_the_schedulers_euler_step(tiny_hy15):
    gen = load_family(tiny_hy15)
    scheduler = gen.pipeline.scheduler
    scheduler.set_timesteps(10)
    assert scheduler.config.shift == gen.shift == 5.0
    x0 = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    sigma, sigma_next = float(scheduler.sigmas[3]), float(scheduler.sigmas[4])
    x_t, v = noised(x0, eps, torch.tensor([sigma]))
    torch.testing.assert_close(scheduler.scale_noise(x0, scheduler.timesteps[3:4], eps), x_t)
    stepped = scheduler.step(v, scheduler.timesteps[3], x_t, return_dict=False)[0]
    torch.testing.assert_close(stepped, noised(x0, eps, torch.tensor([sigma_next]))[0], rtol=1e-5, atol=1e-5)


def test_real_shape_config_is_the_published_transformer():
    """The 8.3B config: the diffusers class defaults (HunyuanVideo 1.5's shapes), ~8.3B parameters when built on the
    meta device (no weights drawn), and a VAE whose factors the preset's clip fits."""
    import inspect

    from diffusers import AutoencoderKLHunyuanVideo15, HunyuanVideo15Transformer3DModel

    cfg = TinyHunyuan15Config.hunyuan_video_15()
    defaults = {
        k: p.default for k, p in inspect.signature(HunyuanVideo15Transformer3DModel.__init__).parameters.items()
    }
    ours = {
        "in_channels": 2 * cfg.latent_channels + 1,
        "out_channels": cfg.latent_channels,
        "num_attention_heads": cfg.num_attention_heads,
        "attention_head_dim": cfg.attention_head_dim,
        "num_layers": cfg.num_layers,
        "num_refiner_layers": cfg.num_refiner_layers,
        "text_embed_dim": cfg.text_dim,
        "text_embed_2_dim": cfg.glyph_dim,
        "image_embed_dim": cfg.image_dim,
        "rope_axes_dim": tuple(cfg.rope_axes_dim),
        "target_size": cfg.target_size,
        "patch_size": 1,
    }
    assert ours == {k: defaults[k] for k in ours}
    vae_defaults = {k: p.default for k, p in inspect.signature(AutoencoderKLHunyuanVideo15.__init__).parameters.items()}
    assert (tuple(cfg.vae_channels), cfg.latent_channels, cfg.spatial, cfg.scaling_factor) == (
        vae_defaults["block_out_channels"],
        vae_defaults["latent_channels"],
        vae_defaults["spatial_compression_ratio"],
        vae_defaults["scaling_factor"],
    )
    with torch.device("meta"):
        real = HunyuanVideo15Transformer3DModel(**ours)
    n = sum(p.numel() for p in real.parameters())
    assert 8.2e9 < n < 8.4e9, n
