"""LTX-Video through the real diffusers classes (a tiny random config): the folder names its family, shapes through
encode → velocity → decode, the token packing is LTXPipeline's (velocity = the transformer on the packed sequence,
unpacked), the T5 mask reaches the transformer, Flow-DPO = log 2 at init, LoRA round trip through
`LTXPipeline.load_lora_weights`, the normalisation inverts, the scheduler's dynamic shift."""

import math

import numpy as np
import pytest
import torch

from raypipe.flow.families import family_of, load_family
from raypipe.flow.lora import add_lora
from raypipe.flow.ltx import LTXFamily, TinyLTXConfig, build_random_ltx, make_tiny_ltx, reference_shift
from tests.conftest import moving_square_frames
from tests.family_checks import dpo_at_init, lora_round_trip


@pytest.fixture(scope="module")
def tiny_ltx(tmp_path_factory):
    return make_tiny_ltx(tmp_path_factory.mktemp("ltx") / "ltx", TinyLTXConfig(), seed=0)


def _frames(n):
    return np.stack([moving_square_frames(t=9, h=32, w=32, seed=i) for i in range(n)])


def test_shapes_packing_and_mask(tiny_ltx):
    assert family_of(tiny_ltx) == "ltx"
    gen = load_family(tiny_ltx)
    assert isinstance(gen, LTXFamily) and (gen.spatial, gen.temporal) == (8, 2) and gen.frames_for(10) == 9
    z = gen.encode_videos(_frames(2))
    assert tuple(z.shape[1:]) == gen.latent_shape(9, 32, 32) == (8, 5, 4, 4)
    assert gen.decode_latents(z).shape == (2, 9, 32, 32, 3)
    text = gen.encode_prompts(["a red square moving right", "a blue circle"])
    assert text.shape == (2, 16, 33) and set(text[..., 32].unique().tolist()) == {0.0, 1.0}
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        v = gen.velocity(z, t, text)
        # the transformer on LTXPipeline's own packing, by hand: [B, C, T, H, W] -> [B, T·H·W, C] token order t, h, w
        tokens = z.permute(0, 2, 3, 4, 1).reshape(2, 5 * 4 * 4, 8)
        out = gen.transformer(
            hidden_states=tokens,
            encoder_hidden_states=text[..., :32],
            timestep=1000 * t,
            encoder_attention_mask=text[..., 32].long(),
            num_frames=5,
            height=4,
            width=4,
            rope_interpolation_scale=(2 / 25, 8, 8),
            return_dict=False,
        )[0]
        torch.testing.assert_close(v, out.reshape(2, 5, 4, 4, 8).permute(0, 4, 1, 2, 3), rtol=1e-5, atol=1e-6)
        padded = text.clone()
        n_real = int(text[1, :, 32].sum())
        padded[1, n_real:, :32] += 5.0  # only masked-out positions change
        torch.testing.assert_close(gen.velocity(z, t, padded), v, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="encode_prompts"):
        gen.velocity(z, t, text[..., :32])


def test_normalisation_inverts_and_dynamic_shift():
    gen = LTXFamily(build_random_ltx(TinyLTXConfig(), seed=0))
    with torch.no_grad():
        gen.pipeline.vae.latents_mean.copy_(torch.linspace(-1, 1, 8))
        gen.pipeline.vae.latents_std.copy_(torch.linspace(0.5, 2, 8))
    gen = LTXFamily(gen.pipeline)  # re-read the statistics
    z = gen.encode_videos(_frames(1))
    raw = gen.pipeline.vae.encode(torch.as_tensor(_frames(1)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1).latent_dist
    expected = gen.pipeline._normalize_latents(raw.mode(), gen.pipeline.vae.latents_mean, gen.pipeline.vae.latents_std)
    torch.testing.assert_close(z, expected, rtol=1e-5, atol=1e-5)
    # the scheduler's dynamic shift: mu linear in the token count between base_shift and max_shift
    config = {"use_dynamic_shifting": True, "base_image_seq_len": 1024, "max_image_seq_len": 4096}
    config.update(base_shift=0.95, max_shift=2.05)
    seq = 5 * 15 * 22  # 33 x 480 x 704 at spatial 32, temporal 8
    assert reference_shift(config, 32, 8) == pytest.approx(math.exp(0.95 + 1.1 * (seq - 1024) / 3072))
    assert reference_shift({"shift": 3.0}, 32, 8) == 3.0


def test_dpo_at_init_and_lora_round_trip(tiny_ltx, tmp_path):
    gen = load_family(tiny_ltx)
    z = gen.encode_videos(_frames(4))
    text = gen.encode_prompts(["a red square moving right"] * 2)
    add_lora(gen.transformer, r=4, alpha=8, targets=gen.lora_targets)
    t, errs = dpo_at_init(gen, z, text)
    # diffusers' LTXPipeline.load_lora_weights
    lora_round_trip(gen, LTXFamily.load(tiny_ltx), tmp_path / "lora", z[:2], t, text)


def test_latent_reward_trunk_runs_the_generators_own_blocks(tiny_ltx, tmp_path):
    """A latent reward on LTX-Video: with every block, its pooled features are the generator's last-block tokens
    (text-to-video and image-to-video prompts); it saves and loads with its geometry; gradients reach the trunk."""
    from raypipe.nrg.model import LatentReward

    gen = load_family(tiny_ltx)
    videos = _frames(2)
    lr = LatentReward.for_family(gen, ("VQ", "MQ"), k_blocks=len(gen.transformer.transformer_blocks))
    x_t, t = torch.randn(2, *gen.latent_shape(9, 32, 32), generator=torch.Generator().manual_seed(3)), torch.rand(2)
    for text in (gen.encode_prompts(["a red square", "a blue circle"]),
                 gen.encode_prompts(["a red square", "a blue circle"], images=videos[:, 0])):  # fmt: skip
        seen = {}
        hook = gen.transformer.transformer_blocks[-1].register_forward_hook(lambda m, i, o, s=seen: s.update(h=o))
        with torch.no_grad():
            gen.velocity(x_t, t, text)
            hook.remove()
            torch.testing.assert_close(lr.features(x_t, t, text), seen["h"].float().mean(1), rtol=1e-5, atol=1e-5)
    back = LatentReward.from_pretrained(lr.save_pretrained(tmp_path / "lr"))
    with torch.no_grad():
        torch.testing.assert_close(back(x_t, t, text), lr(x_t, t, text))
    one = LatentReward.for_family(gen, ("VQ",), k_blocks=1)
    one(x_t, t, text).sum().backward()
    assert one.trunk.transformer_blocks[0].attn1.to_q.weight.grad.abs().sum() > 0
