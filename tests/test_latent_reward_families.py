"""The latent reward on every generator family beyond Wan/LTX-Video (tests/test_nrg.py, tests/test_flow_ltx.py):
HunyuanVideo 1.0/1.5, LTX-2 and CogVideoX trunks run through the family's own velocity and stop after block K;
Wan2.2 A14B has one trunk per expert and scores each sample with the expert its timestep belongs to. Checked
against the generator itself (its hooked block-K tokens); for the family-run trunks also gradients to the trunk and
the latents (guidance) and gradient checkpointing; save/load round trips."""

import pytest
import torch

from raypipe.flow.families import load_family, make_tiny_generator
from raypipe.flow.wan_build import TinyWanConfig, make_tiny_wan
from raypipe.nrg.model import LatentReward

PROMPTS = ["a red square moving left", "a blue circle moving up"]


def _pooled_after(block, run) -> torch.Tensor:
    """The mean over tokens of `block`'s video tokens (its first output) while `run()` runs the generator."""
    seen = {}
    hook = block.register_forward_hook(lambda m, i, o: seen.update(h=o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            run()
    finally:
        hook.remove()
    return seen["h"].float().mean(dim=1)


@pytest.mark.parametrize(
    "family, size",
    [("hunyuan", (9, 32, 32)), ("hunyuan15", (9, 32, 32)), ("ltx2", (9, 32, 32)), ("cogvideox", (9, 56, 56))],
)
def test_trunk_is_the_generators_first_blocks_run_by_its_own_velocity(family, size, tmp_path):
    gen = load_family(make_tiny_generator(family, tmp_path / family))
    blocks = gen.transformer.transformer_blocks  # HunyuanVideo: the double-stream ones, before its single-stream
    x = torch.randn(2, *gen.latent_shape(*size), generator=torch.Generator().manual_seed(1))
    t, text = torch.tensor([0.2, 0.7]), gen.encode_prompts(PROMPTS)
    full = LatentReward.for_family(gen, ("VQ", "MQ"), k_blocks=len(blocks))
    with torch.no_grad():
        features = full.features(x, t, text)
    torch.testing.assert_close(features, _pooled_after(blocks[-1], lambda: gen.velocity(x, t, text)))

    one = LatentReward.for_family(gen, ("VQ",), k_blocks=1)
    # the reward keeps a view of its family for velocity, not the generator: no encoders, no VAE, the trunk inside
    assert one.family.transformer is one.trunk and one.family.pipeline.vae is None
    assert gen.pipeline.vae is not None and gen.transformer is not one.trunk  # the generator itself untouched
    assert len(one.trunk.transformer_blocks) == 1 and not len(getattr(one.trunk, "single_transformer_blocks", []))
    torch.testing.assert_close(
        one.features(x, t, text).detach(), _pooled_after(blocks[0], lambda: gen.velocity(x, t, text))
    )
    grads = []
    for checkpointing in (False, True):  # recomputed blocks give the same gradients
        one.zero_grad()
        one.gradient_checkpointing = checkpointing
        x_t = x.clone().requires_grad_(True)
        one(x_t, t, text).sum().backward()
        assert one.trunk.is_gradient_checkpointing == checkpointing  # the trunk's own recomputation was on
        assert not one.trunk.transformer_blocks[-1]._forward_hooks  # the pooling hook is gone after each call
        block = one.trunk.transformer_blocks[0]
        grads.append((x_t.grad, torch.cat([p.grad.flatten() for p in block.parameters() if p.grad is not None])))
    assert grads[0][0].abs().sum() > 0 and grads[0][1].abs().sum() > 0  # reward guidance needs d r / d x_t
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

    path = one.save_pretrained(tmp_path / "lr")
    with pytest.raises(ValueError, match="pass the loaded generator"):
        LatentReward.from_pretrained(path)
    if family != "cogvideox":  # another family's generator is refused
        with pytest.raises(ValueError, match="the generator given is the"):
            LatentReward.from_pretrained(path, generator=load_family(make_tiny_generator("cogvideox", tmp_path / "c")))
    back = LatentReward.from_pretrained(path, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(back(x, t, text), one(x, t, text))


def test_a14b_scores_each_sample_with_the_trunk_of_its_timesteps_expert(tmp_path):
    gen = load_family(make_tiny_wan(tmp_path / "a14b", TinyWanConfig.wan22_a14b_tiny()))
    experts = gen.transformer
    k = len(experts.high.blocks)
    b = experts.boundary
    t = torch.tensor([b + 0.05, b - 0.3, 0.99, 0.1])
    x = torch.randn(4, *gen.latent_shape(9, 32, 32), generator=torch.Generator().manual_seed(2))
    text = gen.encode_prompts(PROMPTS * 2)
    lr = LatentReward.for_family(gen, ("VQ", "TA"), k_blocks=k)
    with torch.no_grad():
        features = lr.features(x, t, text)
    for i in range(4):
        expert = experts.high if t[i] >= b else experts.low
        own = _pooled_after(expert.blocks[-1], lambda i=i: gen.velocity(x[i : i + 1], t[i : i + 1], text[i : i + 1]))
        torch.testing.assert_close(features[i : i + 1], own)
    other = _pooled_after(experts.low.blocks[-1], lambda: experts.low(x[:1], 1000 * t[:1], text[:1, :16]))
    assert (features[:1] - other).abs().max() > 1e-3  # the experts differ: the routing is what is checked

    # all samples on one side while training: the idle expert's trunk still gets (zero) gradients on every rank
    lr(x[:1], t[:1], text[:1]).sum().backward()
    assert lr.trunk.high.blocks[0].ffn.net[-1].weight.grad.abs().sum() > 0
    assert torch.count_nonzero(lr.trunk.low.blocks[0].ffn.net[-1].weight.grad) == 0

    back = LatentReward.from_pretrained(lr.save_pretrained(tmp_path / "lr"))
    assert (tmp_path / "lr" / "trunk_2").is_dir() and back.trunk.boundary == b and back.k_blocks == k
    with torch.no_grad():
        torch.testing.assert_close(back(x, t, text), lr(x, t, text))
