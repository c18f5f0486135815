"""LTX-2 (its video) through the real diffusers classes (a tiny random config): the folder names its family, shapes
through encode → velocity → decode (the VAE and its normalisation by hand); the transformer's inputs as
LTX2Pipeline.__call__ builds them (captured inside it: packed video tokens, connector prompt embeddings and mask,
timestep = sigma, RoPE coordinates) and `velocity` = that call with the cross-modal attention off, independent of the
audio; the pipeline's own CFG sampling with its calls isolated is our sampler on `velocity`; the packed prompt
round-trips and its mask reaches the transformer; Flow-DPO = log 2 at init; LoRA round trip through
`LTX2Pipeline.load_lora_weights`; the flow target against the scheduler's scale_noise / Euler step and the released
scheduler's dynamic shift; the real-shape config is the 19B transformer."""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch

from raypipe.flow.conditioning import empty_prompt_like, encode_with_images
from raypipe.flow.families import family_of, load_family, make_tiny_generator, takes_image
from raypipe.flow.lora import add_lora
from raypipe.flow.losses import noised
from raypipe.flow.ltx import reference_shift
from raypipe.flow.ltx2 import (
    REFERENCE_CLIP,
    LTX2Family,
    TinyLTX2Config,
    build_random_ltx2,
    pack_text,
    unpack_text,
    vae_factors,
)
from raypipe.flow.sampler import sample
from tests.conftest import moving_square_frames
from tests.family_checks import dpo_at_init, lora_round_trip

PROMPTS = ["a red square moving right", "a blue circle"]
C, T, H, W = 8, 5, 4, 4  # latents of a 9 x 32 x 32 clip (spatial 8, temporal 2)
D = 32  # the connectors' width


@pytest.fixture(scope="module")
def tiny_ltx2(tmp_path_factory):
    return make_tiny_generator("ltx2", tmp_path_factory.mktemp("ltx2") / "ltx2", seed=0)


def _frames(n):
    return np.stack([moving_square_frames(t=9, h=32, w=32, seed=i) for i in range(n)])


def test_loads_by_path_shapes_and_normalisation(tiny_ltx2, tmp_path):
    assert family_of(tiny_ltx2) == "ltx2" and not takes_image(tiny_ltx2)
    bare = tmp_path / "bare"  # a downloaded folder has no raypipe_family.json: the pipeline class names the family
    bare.mkdir()
    shutil.copy(tiny_ltx2 / "model_index.json", bare)
    assert family_of(bare) == "ltx2"
    gen = load_family(tiny_ltx2)
    assert isinstance(gen, LTX2Family) and (gen.spatial, gen.temporal, gen.shift) == (8, 2, 3.0)
    assert gen.frames_for(10) == 9 and gen.latent_shape(9, 32, 32, check=True) == (C, T, H, W)
    frames = _frames(2)
    z = gen.encode_videos(frames)
    assert z.shape == (2, C, T, H, W)
    text = gen.encode_prompts(PROMPTS)
    assert text.shape == (2, 16, D + 1)
    v = gen.velocity(z, torch.tensor([0.3, 0.8]), text)
    assert v.shape == z.shape and torch.isfinite(v).all()
    assert gen.decode_latents(z).shape == (2, 9, 32, 32, 3)
    from raypipe.config import ConfigError

    with pytest.raises(ConfigError, match="multiples of 8"):
        gen.latent_shape(9, 36, 32, check=True)
    with pytest.raises(ValueError, match="text-to-video only"):
        encode_with_images(gen, PROMPTS, frames[:, 0])
    gen.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "raypipe_family.json").read_text())
    assert saved == {"family": "ltx2", "max_text_len": 16, "shift": 3.0, "frame_rate": 24.0}

    # the normalisation with non-trivial statistics: LTX2Pipeline._normalize_latents of the VAE's mode, and back
    vae = gen.pipeline.vae
    with torch.no_grad():
        vae.latents_mean.copy_(torch.linspace(-1, 1, C))
        vae.latents_std.copy_(torch.linspace(0.5, 2, C))
        vae.register_to_config(scaling_factor=0.7)
    gen = LTX2Family(gen.pipeline, max_text_len=16)  # re-read the statistics
    pixels = torch.from_numpy(frames[1:]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    with torch.no_grad():
        raw = vae.encode(pixels).latent_dist.mode()
        decoded = vae.decode(raw, None, return_dict=False)[0]
    z = gen.encode_videos(frames[1:])
    expected = (
        (raw - torch.linspace(-1, 1, C).view(1, -1, 1, 1, 1)) * 0.7 / torch.linspace(0.5, 2, C).view(1, -1, 1, 1, 1)
    )
    torch.testing.assert_close(z, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z, gen.pipeline._normalize_latents(raw, vae.latents_mean, vae.latents_std, 0.7))
    out = gen.decode_latents(z)
    by_hand = ((decoded.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    assert np.abs(out.astype(int) - by_hand.astype(int)).max() <= 1


def _run_pipeline(pipe, prompt, noise, steps, isolate=None, **kwargs):
    """LTX2Pipeline.__call__ from `noise` (packed, so it is not re-normalised) for a 9 x 32 x 32 clip; every transformer
    call's keyword inputs and video output. `isolate`: force isolate_modalities on every call."""
    calls = []

    def pre(_module, args, kw):
        return args, ({**kw, "isolate_modalities": isolate} if isolate is not None else kw)

    def post(_module, _args, kw, out):
        calls.append((dict(kw), out[0].detach().clone()))

    hooks = [
        pipe.transformer.register_forward_pre_hook(pre, with_kwargs=True),
        pipe.transformer.register_forward_hook(post, with_kwargs=True),
    ]
    settings = dict(guidance_scale=1.0, audio_guidance_scale=1.0, guidance_rescale=0.0, audio_guidance_rescale=0.0)
    settings.update(stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0)
    settings.update(kwargs)
    try:
        video, _ = pipe(
            prompt=prompt,
            height=32,
            width=32,
            num_frames=9,
            num_inference_steps=steps,
            latents=pipe._pack_latents(noise),
            output_type="latent",
            max_sequence_length=16,
            return_dict=False,
            **settings,
        )
    finally:
        for hook in hooks:
            hook.remove()
    return video, calls


def test_velocity_is_the_video_stream_as_the_pipeline_calls_it(tiny_ltx2):
    gen = load_family(tiny_ltx2)
    pipe = gen.pipeline
    noise = torch.randn(1, C, T, H, W, generator=torch.Generator().manual_seed(5))
    _, calls = _run_pipeline(pipe, PROMPTS[0], noise, steps=2)
    assert len(calls) == 2  # one call per step (no CFG, STG or modality guidance)
    text = gen.encode_prompts(PROMPTS[:1])
    for step, (kw, joint) in enumerate(calls):
        sigma = pipe.scheduler.sigmas[step].reshape(1)
        hidden = kw["hidden_states"]
        # the inputs that must agree: video tokens (token order t, h, w; channels last), prompt embeddings and mask
        # from the pipeline's own encode_prompt + connectors, timestep = sigma = 1000·σ, RoPE coordinates, fps
        z_t = hidden.reshape(1, T, H, W, C).permute(0, 4, 1, 2, 3)
        if step == 0:
            torch.testing.assert_close(z_t, noise, rtol=0, atol=0)
        embeds, mask = unpack_text(text, D, 16)
        torch.testing.assert_close(kw["encoder_hidden_states"], embeds, rtol=1e-6, atol=1e-6)
        assert torch.equal(kw["encoder_attention_mask"], mask)
        torch.testing.assert_close(kw["timestep"], 1000.0 * sigma, rtol=1e-6, atol=1e-5)
        assert torch.equal(kw["sigma"], kw["timestep"]) and kw["timestep"].dtype == torch.float32
        assert torch.equal(kw["video_coords"], gen.video_coords(1, T, H, W))
        assert (kw["num_frames"], kw["height"], kw["width"], kw["fps"]) == (T, H, W, gen.frame_rate)
        assert kw["use_cross_timestep"] and not kw["isolate_modalities"]
        with torch.no_grad():
            ours = gen.velocity(z_t, sigma, text)
            # the same call with the cross-modal attention off is `velocity`, whatever audio the pipeline passed
            isolated = pipe.transformer(**{**kw, "isolate_modalities": True})[0]
            other_audio = torch.randn(kw["audio_hidden_states"].shape, generator=torch.Generator().manual_seed(9))
            isolated_2 = pipe.transformer(**{**kw, "isolate_modalities": True, "audio_hidden_states": other_audio})[0]
        unpack = lambda x: x.reshape(1, T, H, W, C).permute(0, 4, 1, 2, 3)  # noqa: E731
        torch.testing.assert_close(ours, unpack(isolated), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(isolated_2, isolated, rtol=0, atol=0)
        assert ours.abs().mean() > 1e-2
        # the pipeline's default (joint) prediction attends to its audio: not what we train (the module docstring)
        assert (unpack(joint) - ours).abs().max() > 1e-3

    # bf16: the pipeline casts the video tokens and prompt to the model's dtype, keeps the timestep float32; so does
    # velocity, bit for bit
    gen16 = LTX2Family.load(tiny_ltx2, dtype="bfloat16")
    _, calls16 = _run_pipeline(gen16.pipeline, PROMPTS[0], noise.bfloat16(), steps=2)
    for step, (kw, _) in enumerate(calls16):  # σ = 1, then 0.75 (a timestep of 750 that bf16 would round to 752)
        assert kw["hidden_states"].dtype == torch.bfloat16 and kw["timestep"].dtype == torch.float32
        z16 = kw["hidden_states"].float().reshape(1, T, H, W, C).permute(0, 4, 1, 2, 3)
        with torch.no_grad():
            expected16 = gen16.pipeline.transformer(**{**kw, "isolate_modalities": True})[0]
            got16 = gen16.velocity(z16, pipe.scheduler.sigmas[step : step + 1], gen16.encode_prompts(PROMPTS[:1]))
        assert got16.dtype == torch.float32
        expected16 = expected16.float().reshape(1, T, H, W, C).permute(0, 4, 1, 2, 3)
        torch.testing.assert_close(got16, expected16, rtol=0, atol=0)


def test_the_pipelines_isolated_cfg_sampling_is_our_sampler_on_velocity(tiny_ltx2):
    """LTX2Pipeline.__call__ with CFG (its x0-space guidance, no rescale, no STG or modality guidance) and every
    transformer call switched to isolate_modalities=True: its video latents are `raypipe.flow.sampler.sample` on
    `velocity` with the same scale and our shift, from the same noise; its unconditional half: encode_prompts([""])."""
    gen = load_family(tiny_ltx2)
    pipe = gen.pipeline
    assert not pipe.vae.latents_mean.any() and (pipe.vae.latents_std == 1).all() and pipe.vae.config.scaling_factor == 1
    noise = torch.randn(1, C, T, H, W, generator=torch.Generator().manual_seed(6))
    out, calls = _run_pipeline(pipe, PROMPTS[1], noise, steps=3, isolate=True, guidance_scale=3.0)
    assert len(calls) == 3 and calls[0][0]["hidden_states"].shape[0] == 2  # [negative, positive] per step
    text, uncond = gen.encode_prompts(PROMPTS[1:]), gen.encode_prompts([""])
    torch.testing.assert_close(calls[0][0]["encoder_hidden_states"][:1], uncond[..., :D], rtol=1e-6, atol=1e-6)
    ours = sample(gen.velocity, text, uncond, noise.shape, steps=3, cfg_scale=3.0, shift=gen.shift, noise=noise)
    torch.testing.assert_close(ours, out, rtol=1e-4, atol=1e-5)
    assert (out - noise).abs().mean() > 1e-2  # the sampling moved


def test_packed_prompt_round_trips_and_its_mask_reaches_the_transformer(tiny_ltx2):
    gen = load_family(tiny_ltx2)
    pipe = gen.pipeline
    embeds, mask, _, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False, max_sequence_length=16)
    n_real = int(mask[1].sum())
    assert 0 < n_real < 16 and mask[1, -n_real:].all() and not mask[1, :-n_real].any()  # Gemma: left padding
    assert embeds.shape == (2, 16, D * 2)  # the embeddings and the one Gemma layer, stacked per token
    video, audio, video_mask = pipe.connectors(embeds, mask, padding_side="left")
    packed = gen.encode_prompts(PROMPTS)
    assert torch.equal(packed, pack_text(video, video_mask))
    e, m = unpack_text(packed, D, 16)
    assert torch.equal(e, video) and torch.equal(m, video_mask) and not torch.equal(video, audio)
    assert bool(video_mask.all())  # the learnable registers take the padded positions: nothing is masked
    z = torch.randn(2, C, T, H, W, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.5, 0.5])
    with torch.no_grad():
        v = gen.velocity(z, t, packed)
        masked = packed.clone()
        masked[1, :4, D] = 0.0  # the mask channel is what the transformer masks with
        v_masked = gen.velocity(z, t, masked)
        assert (v_masked[1] - v[1]).abs().max() > 1e-4
        torch.testing.assert_close(v_masked[0], v[0])
        masked[1, :4, :D] += 5.0  # states under a zero mask do not matter
        torch.testing.assert_close(gen.velocity(z, t, masked), v_masked, rtol=1e-5, atol=1e-5)
    uncond = empty_prompt_like(gen.encode_prompts([""]), packed)  # CFG's empty prompt: same rows, any batch
    assert uncond.shape == packed.shape
    with pytest.raises(ValueError, match="encode_prompts"):
        gen.velocity(z, t, packed[..., :D])
    with pytest.raises(ValueError, match="encode_prompts"):
        gen.velocity(z, t, torch.cat([packed, packed[:, :1]], dim=1))


def test_dpo_at_init_and_lora_round_trip_through_the_pipelines_loader(tiny_ltx2, tmp_path):
    gen = load_family(tiny_ltx2)
    assert hasattr(gen.pipeline, "load_lora_weights")  # LTX2LoraLoaderMixin
    z = gen.encode_videos(_frames(4))
    text = gen.encode_prompts(PROMPTS)
    add_lora(gen.transformer, r=4, alpha=8, targets=gen.lora_targets)
    names = [n for n, _ in gen.transformer.named_parameters() if "lora_" in n]
    # the video stream's self- and text-attention q/k/v/out in 2 blocks: 16 projections, A and B each
    assert len(names) == 2 * 16 and not any("audio" in n for n in names)
    assert {n.split(".")[2] for n in names} == {"attn1", "attn2"}
    t, errs = dpo_at_init(gen, z, text)
    loss_w = errs["w"].sum()
    loss_w.backward()
    grads = [p.grad for n, p in gen.transformer.named_parameters() if "lora_A" in n]
    assert all(g is None or not g.any() for g in grads)  # B = 0: A gets no gradient yet ...
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in gen.transformer.named_parameters()
               if "lora_B" in n)  # fmt: skip  # ... every B does (both attentions of every block are used)
    # diffusers' LTX2Pipeline.load_lora_weights
    lora_round_trip(gen, LTX2Family.load(tiny_ltx2), tmp_path / "lora", z[:2], t, text)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "lora" / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert len(list(f.keys())) == 32 and all(k.startswith("transformer.") for k in f.keys())


def test_flow_target_matches_the_scheduler_and_the_released_dynamic_shift(tiny_ltx2):
    gen = load_family(tiny_ltx2)
    scheduler = gen.pipeline.scheduler
    scheduler.set_timesteps(10)
    assert scheduler.config.shift == gen.shift == 3.0
    x0 = torch.randn(1, C, T, H, W, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    sigma, sigma_next = float(scheduler.sigmas[3]), float(scheduler.sigmas[4])
    x_t, v = noised(x0, eps, torch.tensor([sigma]))
    torch.testing.assert_close(scheduler.scale_noise(x0, scheduler.timesteps[3:4], eps), x_t)
    stepped = scheduler.step(v, scheduler.timesteps[3], x_t, return_dict=False)[0]
    torch.testing.assert_close(stepped, noised(x0, eps, torch.tensor([sigma_next]))[0], rtol=1e-5, atol=1e-5)

    # the released scheduler shifts dynamically: exp(mu) at 33 x 512 x 768 (5 x 16 x 24 = 1,920 tokens at 32 / 8)
    from diffusers.pipelines.ltx2.pipeline_ltx2 import calculate_shift

    dynamic = build_random_ltx2(dataclasses.replace(TinyLTX2Config(), dynamic_shift=True)).scheduler.config
    mu = 0.95 + (2.05 - 0.95) * (1920 - 1024) / (4096 - 1024)
    assert REFERENCE_CLIP == (33, 512, 768)
    assert reference_shift(dynamic, 32, 8, REFERENCE_CLIP) == pytest.approx(math.exp(mu)) == pytest.approx(3.5637, 1e-4)
    assert mu == pytest.approx(calculate_shift(1920, 1024, 4096, 0.95, 2.05))  # what LTX2Pipeline computes


def test_real_shape_config_is_the_published_transformer():
    """The 19B config: the diffusers class defaults (LTX-2's shapes), ~18.9B parameters (5.7B of them the audio stream
    and the cross-modal attention) when built on the meta device, and a VAE of 32 x 32 x 8 compression."""
    import inspect

    from diffusers import LTX2VideoTransformer3DModel

    cfg = TinyLTX2Config.ltx2()
    defaults = {k: p.default for k, p in inspect.signature(LTX2VideoTransformer3DModel.__init__).parameters.items()}
    ours = {
        "in_channels": cfg.latent_channels,
        "num_attention_heads": cfg.num_attention_heads,
        "attention_head_dim": cfg.attention_head_dim,
        "cross_attention_dim": cfg.num_attention_heads * cfg.attention_head_dim,
        "audio_in_channels": cfg.audio_latent_channels * cfg.mel_bins // 4,
        "audio_num_attention_heads": cfg.audio_heads,
        "audio_attention_head_dim": cfg.audio_head_dim,
        "audio_cross_attention_dim": cfg.audio_heads * cfg.audio_head_dim,
        "num_layers": cfg.num_layers,
        "caption_channels": cfg.text_dim,
    }
    assert ours == {k: defaults[k] for k in ours}
    assert vae_factors(cfg) == (32, 8) and tuple(defaults["vae_scale_factors"]) == (8, 32, 32)
    assert cfg.max_text_len % cfg.connector_registers == 0 and cfg.connector_heads * cfg.connector_head_dim == 3840
    with torch.device("meta"):
        real = LTX2VideoTransformer3DModel(**ours)
    n = sum(p.numel() for p in real.parameters())
    assert 18.8e9 < n < 19.0e9, n
