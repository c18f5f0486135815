"""Image-to-video through the prompt tensor (raypipe.flow.conditioning) for Wan2.2 TI2V and LTX-Video: the packing,
the image's latent as the pipelines make it, the transformer called as their image-to-video pipelines call it, the
conditioning reaching the velocity, a nil loss and an exact landing on the given first frame, DPO at init."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raypipe.flow.conditioning import empty_prompt_like, pack_image, split_conditions, split_image
from raypipe.flow.families import load_family, make_tiny_generator
from raypipe.flow.lora import add_lora, reference
from raypipe.flow.losses import LOG2, beta_t, dpo_loss, flow_error, noised, sample_t
from raypipe.flow.sampler import sample
from raypipe.flow.wan_build import TinyWanConfig, make_tiny_wan
from tests.conftest import moving_square_frames

PROMPTS = ["a red square moving right", "a blue circle moving up"]


@pytest.fixture(scope="module")
def generators(tmp_path_factory):
    root = tmp_path_factory.mktemp("i2v")
    return {
        "ti2v": make_tiny_wan(root / "ti2v", TinyWanConfig.wan22_ti2v_tiny(), seed=0),
        "ltx": make_tiny_generator("ltx", root / "ltx", seed=0),
        "wan21_i2v": make_tiny_wan(root / "wan21_i2v", TinyWanConfig.wan21_i2v_tiny(), seed=0),
        "a14b_i2v": make_tiny_wan(root / "a14b_i2v", TinyWanConfig.wan22_i2v_a14b_tiny(), seed=0),
    }


def _videos(n=2, t=9):
    return np.stack([moving_square_frames(t=t, h=32, w=32, seed=i) for i in range(n)])


def test_packing_round_trips_and_refuses_what_it_cannot_read():
    g = torch.Generator().manual_seed(0)
    text, latent = torch.randn(2, 7, 8, generator=g), torch.randn(2, 3, 1, 4, 5, generator=g)
    packed = pack_image(text, latent)
    assert packed.shape == (2, 7 + 1 + 8, 8)  # 60 values in rows of 8 -> 8 rows (4 zeros of padding)
    back_text, back_latent = split_image(packed, 7)
    torch.testing.assert_close(back_text, text)
    torch.testing.assert_close(back_latent, latent)
    assert split_image(text, 7)[1] is None  # exactly the prompt's rows: no image
    with pytest.raises(ValueError, match="header"):
        split_image(packed[:, :-1], 7)
    with pytest.raises(ValueError, match=r"\[B=2, C, T, H, W\]"):
        pack_image(text, latent[:1])
    # a whole conditioning video and image-encoder states (Wan2.1 I2V) round trip too
    video, states = torch.randn(2, 3, 4, 2, 2, generator=g), torch.randn(2, 5, 3, generator=g)
    packed2 = pack_image(text, video, states)
    assert packed2.shape == (2, 7 + 1 + 6 + 2, 8)  # 48 values -> 6 rows; 15 -> 2 rows
    words, back_video, back_states = split_conditions(packed2, 7)
    assert torch.equal(words, text) and torch.equal(back_video, video) and torch.equal(back_states, states)
    # CFG's unconditional input: the empty prompt's rows, each sample's image rows kept
    uncond = torch.full((1, 7, 8), -1.0)
    both = empty_prompt_like(uncond, packed)
    assert torch.equal(both[:, :7], uncond.expand(2, 7, 8)) and torch.equal(both[:, 7:], packed[:, 7:])
    assert torch.equal(empty_prompt_like(uncond, text), uncond.expand(2, 7, 8))


def test_a_text_to_video_generator_refuses_an_image(tmp_path):
    gen = load_family(make_tiny_wan(tmp_path / "wan21", TinyWanConfig(), seed=0))
    assert not gen.takes_image
    with pytest.raises(ValueError, match="text-to-video only"):
        gen.encode_prompts(PROMPTS, images=_videos()[:, 0])


@pytest.mark.parametrize("name", ["ti2v", "ltx"])
def test_the_image_latent_is_the_videos_first_latent_frame(name, generators):
    gen = load_family(generators[name])
    videos = _videos()
    z = gen.encode_videos(videos)
    text, image = split_image(gen.encode_prompts(PROMPTS, images=videos[:, 0]), gen.encode_prompts(PROMPTS).shape[1])
    assert image.shape == (2, z.shape[1], 1, *z.shape[3:])
    # causal VAEs: the first latent frame depends on the first frame only
    torch.testing.assert_close(image, z[:, :, :1], rtol=1e-4, atol=1e-4)


def test_ti2v_image_latent_is_the_pipelines_condition(generators):
    """WanImageToVideoPipeline(expand_timesteps=True).prepare_latents encodes the same latent."""
    from diffusers import WanImageToVideoPipeline

    gen = load_family(generators["ti2v"])
    p = gen.pipeline
    i2v = WanImageToVideoPipeline(
        tokenizer=p.tokenizer, text_encoder=p.text_encoder, vae=p.vae, scheduler=p.scheduler,
        transformer=p.transformer, expand_timesteps=True,
    )  # fmt: skip
    first = _videos()[:, 0]
    pixels = torch.from_numpy(first).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    conditions = [
        i2v.prepare_latents(pixels[k : k + 1], 1, 6, 32, 32, 9, torch.float32, torch.device("cpu"))[1] for k in range(2)
    ]
    _, image = split_image(gen.encode_prompts(PROMPTS, images=first), gen.max_text_len)
    torch.testing.assert_close(image, torch.cat(conditions), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["ti2v", "ltx"])
def test_velocity_calls_the_transformer_as_the_i2v_pipelines_do(name, generators):
    gen = load_family(generators[name])
    videos = _videos()
    z = gen.encode_videos(videos)
    text = gen.encode_prompts(PROMPTS, images=videos[:, 0])
    words, image = split_image(text, gen.encode_prompts(PROMPTS).shape[1])
    t = torch.tensor([0.3, 0.8])
    x_t = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        v = gen.velocity(x_t, t, text)
        mask = torch.ones(1, 1, *z.shape[2:])
        mask[:, :, 0] = 0  # 1 where the latents are noisy
        hidden = (1 - mask) * image + mask * x_t  # both pipelines' latent_model_input
        if name == "ti2v":
            ts = (mask[0][0][:, ::2, ::2] * 1000).flatten()[None] * t[:, None]  # WanImageToVideoPipeline's temp_ts
            out = gen.transformer(hidden, ts, words, return_dict=False)[0]
        else:
            tokens = lambda x: gen.pipeline._pack_latents(x, 1, 1)  # noqa: E731
            ts = (1000 * t)[:, None] * tokens(mask).squeeze(-1)  # LTXImageToVideoPipeline: t·(1 − conditioning)
            out = gen.transformer(
                hidden_states=tokens(hidden), encoder_hidden_states=words[..., :-1], timestep=ts,
                encoder_attention_mask=words[..., -1].long(), num_frames=z.shape[2], height=z.shape[3],
                width=z.shape[4], rope_interpolation_scale=(gen.temporal / gen.frame_rate, gen.spatial, gen.spatial),
                return_dict=False,
            )[0]  # fmt: skip
            out = gen.pipeline._unpack_latents(out, *z.shape[2:], 1, 1)
        torch.testing.assert_close(v[:, :, 1:], out[:, :, 1:], rtol=1e-4, atol=1e-5)
        # frame 0: the straight path's velocity to the image, so a video that starts on the image has no error there
        eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(2))
        x0 = torch.cat([image, z[:, :, 1:]], dim=2)
        xt, target = noised(x0, eps, t)
        err = (gen.velocity(xt, t, text) - target)[:, :, :1]
        assert err.abs().max() < 1e-4
        # the image reaches the transformer: another first frame, another velocity on the frames it generates
        other = gen.encode_prompts(PROMPTS, images=255 - videos[:, 0])
        assert (gen.velocity(x_t, t, other) - v)[:, :, 1:].abs().mean() > 1e-3


@pytest.mark.parametrize("name", ["ti2v", "ltx"])
def test_sampling_with_cfg_lands_on_the_image_and_dpo_is_log2_at_init(name, generators):
    gen = load_family(generators[name])
    videos = _videos()
    text = gen.encode_prompts(PROMPTS, images=videos[:, 0])
    _, image = split_image(text, gen.encode_prompts([""]).shape[1])
    shape = (2, *gen.latent_shape(9, 32, 32))
    z0 = sample(gen.velocity, text, gen.encode_prompts([""]), shape, steps=4, cfg_scale=4.0, shift=gen.shift,
                generator=torch.Generator().manual_seed(0))  # fmt: skip
    torch.testing.assert_close(z0[:, :, :1], image, rtol=0, atol=1e-4)
    add_lora(gen.transformer, r=4, alpha=8, targets=gen.lora_targets)
    g = torch.Generator().manual_seed(0)
    tt = sample_t(2, g, shift=gen.shift)
    z = gen.encode_videos(np.concatenate([videos, _videos(4)[2:]]))
    errs = {}
    for side, x0 in (("w", z[:2]), ("l", z[2:])):
        xt, v = noised(x0, torch.randn(x0.shape, generator=g), tt)
        errs[side] = flow_error(gen.velocity(xt, tt, text), v)
        with reference(gen.transformer):
            errs["ref_" + side] = flow_error(gen.velocity(xt, tt, text), v)
    loss, _ = dpo_loss(errs["w"], errs["ref_w"], errs["l"], errs["ref_l"], beta_t(500, tt))
    assert loss.item() == pytest.approx(LOG2, abs=1e-6)
    loss.backward()  # gradients reach the adapters through the conditioned forward
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.transformer.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["ti2v", "wan21_i2v"])
def test_latent_reward_conditions_on_the_image_as_the_generator_does_and_guidance_keeps_it(name, generators, tmp_path):
    """A trunk of all the generator's blocks pools exactly the generator's own last-block tokens for an
    image-to-video prompt (TI2V's replaced frame; Wan2.1 I2V's channels and CLIP states); it round-trips with its
    prompt rows; NRG guidance moves the samples, and TI2V's still start on the image."""
    from raypipe.nrg.model import LatentReward
    from raypipe.nrg.sampling import guided_samples

    gen = load_family(generators[name])
    videos = _videos()
    text = gen.encode_prompts(PROMPTS, images=videos[:, 0], frames=9)
    n = len(gen.transformer.blocks)
    lr = LatentReward.from_generator(gen.transformer, ("VQ", "MQ"), k_blocks=n, text_rows=gen.max_text_len)
    seen = {}
    hook = gen.transformer.blocks[-1].register_forward_hook(lambda m, i, o: seen.update(h=o))
    x_t, t = torch.randn(2, *gen.latent_shape(9, 32, 32), generator=torch.Generator().manual_seed(3)), torch.rand(2)
    with torch.no_grad():
        gen.velocity(x_t, t, text)
        hook.remove()
        torch.testing.assert_close(lr.features(x_t, t, text), seen["h"].float().mean(dim=1), rtol=1e-5, atol=1e-5)
        other = gen.encode_prompts(PROMPTS, images=255 - videos[:, 0], frames=9)
        assert (lr(x_t, t, other) - lr(x_t, t, text)).abs().max() > 1e-4  # the image reaches the reward
    back = LatentReward.from_pretrained(lr.save_pretrained(tmp_path / "lr"))
    assert back.text_rows == gen.max_text_len
    out = guided_samples(gen, back, PROMPTS, {"VQ": 1.0}, 4.0, 0, 4, 1.0, (2, *gen.latent_shape(9, 32, 32))[1:],
                         decode=False, images=videos[:, 0])  # fmt: skip
    plain = guided_samples(gen, back, PROMPTS, {"VQ": 0.0}, 0.0, 0, 4, 1.0, gen.latent_shape(9, 32, 32),
                           decode=False, images=videos[:, 0])  # fmt: skip
    if name == "ti2v":
        _, image = split_image(text, gen.max_text_len)
        torch.testing.assert_close(out["z0"][:, :, :1], image, rtol=0, atol=1e-4)
    assert (out["z0"] - plain["z0"])[:, :, 1:].abs().max() > 1e-5  # guidance moved the generated frames


def test_generate_starts_every_sample_on_the_given_picture(generators, tmp_path, make_mp4):
    from PIL import Image

    from raypipe.config import ClipConfig, ConfigError
    from raypipe.recipes.generate import GenerateConfig
    from raypipe.recipes.generate import run as run_generate
    from raypipe.video.decode import VideoError, read_all_frames, read_image, resize_frames

    picture = moving_square_frames(t=1, h=48, w=40, seed=5)[0]
    Image.fromarray(picture).save(tmp_path / "first.png")
    assert np.array_equal(read_image(str(tmp_path / "first.png"), 32, 32), resize_frames(picture[None], 32, 32)[0])
    video = make_mp4("v.mp4", t=6, h=40, w=48)
    first = read_all_frames(video)[0]
    assert np.array_equal(read_image(video, 32, 32), resize_frames(first[None], 32, 32)[0])
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    assert isinstance(read_image(str(tmp_path / "junk.png"), 32, 32), VideoError)

    base = dict(generator=str(generators["ti2v"]), prompts="a red square moving right|a blue circle moving up",
                steps=3, clip=ClipConfig(frames=9, height=32, width=32), image=str(tmp_path / "first.png"))  # fmt: skip
    out = run_generate(GenerateConfig(**base, out=str(tmp_path / "g")))
    a, b = (read_all_frames(r["file"]).astype(int) for r in out["samples"])
    assert np.abs(a[0] - b[0]).mean() < 2 < np.abs(a[-1] - b[-1]).mean()  # one first frame, two videos
    with pytest.raises(ConfigError, match="image="):
        run_generate(GenerateConfig(**{**base, "image": str(tmp_path / "junk.png")}, out=str(tmp_path / "j")))
    wan21 = make_tiny_wan(tmp_path / "wan21", TinyWanConfig(), seed=0)
    with pytest.raises(ConfigError, match="image-to-video generator"):
        run_generate(GenerateConfig(**{**base, "generator": str(wan21)}, out=str(tmp_path / "t")))


@pytest.mark.parametrize("name", ["wan21_i2v", "a14b_i2v"])
def test_wan_i2v_by_channels_is_the_pipelines_conditioning(name, generators):
    """Wan2.1 I2V (CLIP states) and Wan2.2 I2V-A14B (two experts, no CLIP): the packed conditioning equals
    WanImageToVideoPipeline's prepare_latents condition (mask + latent of the image and black frames) and encode_image
    states; the velocity is the pipeline's transformer (the expert of each t) on [x_t, condition]; DPO is log 2."""
    from PIL import Image

    from raypipe.flow.conditioning import concat_condition

    gen = load_family(generators[name])
    pipe, videos = gen.pipeline, _videos()
    first = videos[:, 0]
    text = gen.encode_prompts(PROMPTS, images=first, frames=9)
    words, latent, states = split_conditions(text, gen.max_text_len)
    pixels = torch.from_numpy(first).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    z_dim = pipe.vae.config.z_dim
    cond = torch.cat(
        [pipe.prepare_latents(pixels[k : k + 1], 1, z_dim, 32, 32, 9, torch.float32, torch.device("cpu"))[1]
         for k in range(2)]
    )  # fmt: skip
    x_t = torch.randn(2, *gen.latent_shape(9, 32, 32), generator=torch.Generator().manual_seed(1))
    ours = concat_condition(x_t, latent, pipe.transformer.config.in_channels)
    torch.testing.assert_close(ours[:, z_dim:], cond, rtol=1e-5, atol=1e-5)
    if name == "wan21_i2v":
        clip = pipe.encode_image([Image.fromarray(f) for f in first], device=torch.device("cpu"))
        torch.testing.assert_close(states, clip)
    else:
        assert states is None
    t = torch.tensor([0.95, 0.3])  # A14B I2V: the high-noise expert above 0.9, the low-noise one below
    with torch.no_grad():
        v = gen.velocity(x_t, t, text)
        for k in range(2):
            expert = pipe.transformer if name == "wan21_i2v" or t[k] >= 0.9 else pipe.transformer_2
            extra = {"encoder_hidden_states_image": clip[k : k + 1]} if name == "wan21_i2v" else {}
            hand = expert(torch.cat([x_t, cond], 1)[k : k + 1], 1000 * t[k : k + 1], words[k : k + 1],
                          return_dict=False, **extra)[0]  # fmt: skip
            torch.testing.assert_close(v[k : k + 1], hand, rtol=1e-4, atol=1e-5)
        other = gen.encode_prompts(PROMPTS, images=255 - first, frames=9)
        assert (gen.velocity(x_t, t, other) - v).abs().mean() > 1e-3  # the image reaches every frame
    with pytest.raises(ValueError, match="needs a conditioning image"):
        gen.velocity(x_t, t, gen.encode_prompts(PROMPTS))
    with pytest.raises(ValueError, match="frames must be"):
        gen.encode_prompts(PROMPTS, images=first)
    add_lora(gen.transformer, r=4, alpha=8, targets=gen.lora_targets)
    z = gen.encode_videos(np.concatenate([videos, _videos(4)[2:]]))
    g = torch.Generator().manual_seed(0)
    errs = {}
    for side, x0 in (("w", z[:2]), ("l", z[2:])):
        xt, target = noised(x0, torch.randn(x0.shape, generator=g), t)
        errs[side] = flow_error(gen.velocity(xt, t, text), target)
        with reference(gen.transformer):
            errs["ref_" + side] = flow_error(gen.velocity(xt, t, text), target)
    loss, _ = dpo_loss(errs["w"], errs["ref_w"], errs["l"], errs["ref_l"], beta_t(500, t))
    assert loss.item() == pytest.approx(LOG2, abs=1e-6)


@pytest.mark.parametrize("name", ["ti2v", "ltx", "wan21_i2v"])
def test_training_latents_start_on_the_image(name, generators):
    """A loser whose first frame differs from the image (H.264) trains as if it started on it (replace families);
    the flow error of that frame is then nil at any t, small t included. Channel-conditioned Wan I2V generates the
    first frame: its latents stay as they are."""
    from raypipe.flow.conditioning import start_on_image

    gen = load_family(generators[name])
    videos = _videos()
    text = gen.encode_prompts(PROMPTS, images=videos[:, 0], frames=9) if name == "wan21_i2v" else None
    text = text if text is not None else gen.encode_prompts(PROMPTS, images=videos[:, 0])
    loser = videos.copy()
    loser[:, 0] = np.clip(loser[:, 0].astype(int) + 9, 0, 255).astype(np.uint8)  # a slightly different first frame
    z = gen.encode_videos(loser)
    started = start_on_image(gen, z, text)
    assert torch.equal(start_on_image(gen, z, gen.encode_prompts(PROMPTS)), z)  # no image: unchanged
    if name == "wan21_i2v":
        assert torch.equal(started, z)
        return
    _, image = split_image(text, gen.max_text_len)
    assert torch.equal(started[:, :, :1], image) and torch.equal(started[:, :, 1:], z[:, :, 1:])
    t = torch.tensor([1e-3, 0.5])
    xt, target = noised(started, torch.randn(z.shape, generator=torch.Generator().manual_seed(4)), t)
    with torch.no_grad():
        assert (gen.velocity(xt, t, text) - target)[:, :, :1].abs().max() < 1e-3
