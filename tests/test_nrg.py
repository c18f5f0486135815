"""Flow-NRG: the latent reward model built from the generator's first K blocks, and reward-guided sampling
(SPEC §6): guidance sign, the t/(1-t) factor, the unguided first step, and zero weights = unguided bit for bit."""

from pathlib import Path

import numpy as np
import pytest
import torch

from raypipe.config import ClipConfig
from raypipe.data.weights import weight_vector as parse_weights
from raypipe.flow.family import WanFamily
from raypipe.flow.sampler import sample, time_grid
from raypipe.flow.wan_build import TinyWanConfig, make_tiny_wan
from raypipe.nrg.guidance import RewardGuidance, guidance_scale
from raypipe.nrg.model import LatentReward

DIMS = ("VQ", "MQ", "TA")
SHAPE = (2, 4, 3, 4, 4)  # tiny Wan latents: z 4, 3 latent frames, 4x4


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    return WanFamily.load(make_tiny_wan(tmp_path_factory.mktemp("wan") / "wan", TinyWanConfig(), seed=0))


class LinearReward(torch.nn.Module):
    """r_d(x) = <a_d, x> (a known gradient), ignoring t and the prompt."""

    def __init__(self, a: torch.Tensor, dims=DIMS):
        super().__init__()
        self.a, self.dims = a, dims

    def forward(self, x, t, text):
        return torch.stack([(x * self.a[d]).flatten(1).sum(1) for d in range(len(self.dims))], dim=1)


def test_latent_reward_copies_the_generator_blocks_and_round_trips(gen, tmp_path):
    lr = LatentReward.from_generator(gen.transformer, DIMS, k_blocks=1)
    assert lr.k_blocks == 1
    src = gen.transformer.state_dict()
    for key, value in lr.trunk.state_dict().items():
        if not key.startswith(("proj_out", "scale_shift_table", "norm_out")):
            torch.testing.assert_close(value, src[key], rtol=0, atol=0)
    # the pooled features are the generator's own hidden states after block 1 (hooked), mean over tokens
    x, t = torch.randn(SHAPE), torch.tensor([0.3, 0.8])
    text = gen.encode_prompts(["a red circle moving left", "a blue square moving up"])
    seen = {}
    hook = gen.transformer.blocks[0].register_forward_hook(lambda m, i, o: seen.setdefault("h", o))
    with torch.no_grad():
        gen.velocity(x, t, text)
        feats = lr.features(x, t, text)
    hook.remove()
    torch.testing.assert_close(feats, seen["h"].float().mean(dim=1), rtol=1e-5, atol=1e-5)
    assert lr(x, t, text).shape == (2, 3)
    lr.save_pretrained(tmp_path / "lr")
    back = LatentReward.from_pretrained(tmp_path / "lr")
    with torch.no_grad():
        torch.testing.assert_close(back(x, t, text), lr(x, t, text), rtol=0, atol=0)
    with pytest.raises(ValueError, match="k_blocks"):
        LatentReward.from_generator(gen.transformer, DIMS, k_blocks=5)


def test_trainable_parts():
    from diffusers import WanTransformer3DModel

    tr = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        text_dim=8,
        freq_dim=16,
        ffn_dim=16,
        num_layers=2,
    )
    heads = LatentReward.from_generator(tr, DIMS, 2, trainable="heads")
    assert {n.split(".")[0] for n, p in heads.named_parameters() if p.requires_grad} == {"norm", "heads"}
    blocks = LatentReward.from_generator(tr, DIMS, 2, trainable="blocks")
    names = [n for n, p in blocks.named_parameters() if p.requires_grad]
    assert any(n.startswith("trunk.blocks.") for n in names)
    assert not any(n.startswith("trunk.patch_embedding") or n.startswith("trunk.condition_embedder") for n in names)


def test_guidance_scale_closed_form():
    t = torch.tensor([0.0, 0.25, 0.5, 0.9, 0.999, 1.0])
    expected = torch.tensor([0.0, 1 / 3, 1.0, 9.0, 999.0, 0.0])
    torch.testing.assert_close(guidance_scale(t), expected, rtol=1e-4, atol=0)


def test_guided_velocity_is_v_minus_lambda_t_over_1_minus_t_times_the_gradient():
    a = torch.randn(3, *SHAPE[1:])
    w = {"VQ": 0.1, "MQ": 0.1, "TA": 0.8}
    guide = RewardGuidance(LinearReward(a), torch.zeros(2, 1, 1), w, strength=0.7)
    x, v = torch.randn(SHAPE), torch.randn(SHAPE)
    grad = 0.1 * a[0] + 0.1 * a[1] + 0.8 * a[2]  # ∇ Σ w_d <a_d, x>
    for t_value in (0.2, 0.5, 0.95):
        t = torch.full((2,), t_value)
        torch.testing.assert_close(
            guide(x, t, v), v - 0.7 * t_value / (1 - t_value) * grad.expand(SHAPE), rtol=1e-5, atol=1e-5
        )
    assert torch.equal(guide(x, torch.ones(2), v), v)  # t = 1: the first step is not guided


def test_first_step_skipped_and_every_other_step_guided():
    a = torch.ones(3, *SHAPE[1:])
    guide = RewardGuidance(LinearReward(a), torch.zeros(2, 1, 1), {"TA": 1.0}, strength=0.1)
    field = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    out = sample(field, torch.zeros(2, 1, 1), None, SHAPE, steps=5, shift=3.0, noise=noise, guidance=guide)
    assert [round(s["t"], 6) for s in guide.trace] == [round(float(t), 6) for t in time_grid(5, 3.0)[1:5]]
    # zero velocity: x0 = noise + Σ_steps Δ_i · λ · t_i/(1-t_i) · ∇r, ∇r = 1 everywhere (t = 1 contributes 0)
    grid = time_grid(5, 3.0)
    total = sum(float(grid[i] - grid[i + 1]) * 0.1 * float(guidance_scale(grid[i : i + 1])) for i in range(5))
    torch.testing.assert_close(out, noise + total, rtol=1e-5, atol=1e-5)


def test_positive_brightness_reward_makes_samples_brighter(gen):
    """A reward that prefers brighter latents (mean value) raises the samples' mean; a negative weight lowers it."""
    text = gen.encode_prompts(["a red circle moving left"] * 2)
    uncond = gen.encode_prompts([""])
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    bright = LinearReward(torch.ones(3, *SHAPE[1:]))  # r = sum of the latent: gradient 1 everywhere
    means = {}
    for w in (0.0, 1.0, -1.0):
        guide = RewardGuidance(bright, text, {"VQ": w}, strength=0.2)
        z = sample(
            gen.velocity, text, uncond, SHAPE, steps=6, cfg_scale=3.0, shift=gen.shift, noise=noise, guidance=guide
        )
        means[w] = float(z.mean())
    assert means[1.0] > means[0.0] + 0.1 and means[-1.0] < means[0.0] - 0.1


def test_zero_weights_reproduce_unguided_sampling_bit_for_bit(gen):
    lr = LatentReward.from_generator(gen.transformer, DIMS, k_blocks=1).eval()
    text = gen.encode_prompts(["a blue square moving up", "a green circle moving down"])
    uncond = gen.encode_prompts([""])
    runs = []
    for guidance in (
        None,
        RewardGuidance(lr, text, parse_weights("{VQ: 0, MQ: 0, TA: 0}", DIMS), strength=5.0),
        RewardGuidance(lr, text, parse_weights("{TA: 1}", DIMS), strength=0.0),
    ):
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
        runs.append(
            sample(
                gen.velocity,
                text,
                uncond,
                SHAPE,
                steps=4,
                cfg_scale=4.0,
                shift=gen.shift,
                noise=noise,
                guidance=guidance,
            )
        )
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    guided = RewardGuidance(lr, text, parse_weights("{TA: 1}", DIMS), strength=5.0)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    z = sample(gen.velocity, text, uncond, SHAPE, steps=4, cfg_scale=4.0, shift=gen.shift, noise=noise, guidance=guided)
    assert not torch.equal(z, runs[0]) and len(guided.trace) == 3


def test_parse_weights():
    assert parse_weights("{VQ: 0.1, MQ: 0.1, TA: 0.8}", DIMS) == {"VQ": 0.1, "MQ": 0.1, "TA": 0.8}
    assert parse_weights({"TA": 1}, DIMS) == {"VQ": 0.0, "MQ": 0.0, "TA": 1.0}
    assert parse_weights(None, DIMS) == {"VQ": 0.0, "MQ": 0.0, "TA": 0.0}
    with pytest.raises(ValueError, match="unknown dimension 'XX'"):
        parse_weights("{XX: 1}", DIMS)
    with pytest.raises(ValueError, match="must be a number"):
        parse_weights("{TA: high}", DIMS)
    with pytest.raises(ValueError, match="finite"):
        parse_weights({"TA": float("inf")}, DIMS)


def test_generate_writes_videos_and_rewards_and_rejects_bad_requests(gen, tmp_path):
    import json

    from raypipe.config import ConfigError
    from raypipe.recipes.generate import GenerateConfig
    from raypipe.recipes.generate import run as run_generate

    wan = tmp_path / "wan"
    gen.pipeline.save_pretrained(wan)
    (wan / "raypipe_family.json").write_text(json.dumps({"family": "wan", "max_text_len": 16, "shift": 3.0}))
    LatentReward.from_generator(gen.transformer, DIMS, k_blocks=1).save_pretrained(tmp_path / "lr")
    base = dict(
        generator=str(wan),
        latent_reward=str(tmp_path / "lr"),
        prompts="a red circle moving left|a blue square moving up|a white triangle moving down",
        steps=3,
        clip=ClipConfig(frames=5, height=16, width=16),
    )
    guided = run_generate(GenerateConfig(**base, weights={"TA": 1.0}, strength=2.0, out=str(tmp_path / "g")))
    plain = run_generate(GenerateConfig(**base, weights={"TA": 1.0}, strength=0.0, out=str(tmp_path / "u")))
    assert [r["prompt"] for r in guided["samples"]][1] == "a blue square moving up"
    assert all(Path(r["file"]).stat().st_size > 0 for r in guided["samples"])
    assert set(guided["samples"][0]["latent_rewards"]) == set(DIMS)
    # guidance raises the guided objective on average (the gradient step on r_TA, same seeds)
    g = np.mean([r["weighted_reward"] for r in guided["samples"]])
    u = np.mean([r["weighted_reward"] for r in plain["samples"]])
    assert g > u
    with pytest.raises(ConfigError, match="unknown dimension"):
        run_generate(GenerateConfig(**base, weights={"XX": 1.0}, strength=1.0, out=str(tmp_path / "x")))
    with pytest.raises(ConfigError, match="needs latent_reward"):
        run_generate(
            GenerateConfig(
                **{**base, "latent_reward": None}, weights={"TA": 1.0}, strength=1.0, out=str(tmp_path / "y")
            )
        )
    with pytest.raises(ConfigError, match="steps must be"):
        run_generate(GenerateConfig(**{**base, "steps": 10_000}, out=str(tmp_path / "z")))


def test_differentiable_patches_equal_the_processor_layout():
    from raypipe.nrg.pixel import patches_torch
    from raypipe.reward.processor import video_patches

    frames = np.random.default_rng(0).integers(0, 256, (5, 56, 84, 3), dtype=np.uint8)  # odd T: last repeated
    expected, _ = video_patches(frames)
    got = patches_torch(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_bench_nrg_smoke(gen, tmp_path, reward_checkpoint, capsys):
    """Tiny everything, two seeds and a two-λ sweep: every run is judged by reward and oracle on every seed's
    prompts, pooled with intervals, claims get verdicts, the cost is measured; a rerun reads the seeds back."""
    import argparse
    import json

    from raypipe.bench.nrg import run_nrg_bench

    wan = tmp_path / "wan"
    gen.pipeline.save_pretrained(wan)
    (wan / "raypipe_family.json").write_text(json.dumps({"family": "wan", "max_text_len": 16, "shift": 3.0}))
    for name in ("noisy", "clean"):
        LatentReward.from_generator(gen.transformer, DIMS, k_blocks=1).save_pretrained(tmp_path / name)
    args = argparse.Namespace(
        out=str(tmp_path / "b"),
        generator=str(wan),
        latent_reward=str(tmp_path / "noisy"),
        clean_latent_reward=str(tmp_path / "clean"),
        reward=str(reward_checkpoint),
        prompts="3",
        weights=["{TA: 1}", "{VQ: 0.5, MQ: 0.5}"],
        strength="0,1,2",
        steps=3,
        cfg_scale=2.0,
        frames=9,
        height=16,
        width=16,
        seeds="0,1",
        cost_prompts=2,
        hacking_margin=0.05,
    )
    report = run_nrg_bench(args)
    assert report["strengths"] == [1.0, 2.0]  # λ = 0 is the unguided baseline, not a run
    assert set(report["runs"]) == {
        *(f"noisy {w} λ={lam}" for w in ("{TA: 1}", "{VQ: 0.5, MQ: 0.5}") for lam in (1, 2)),
        "clean {TA: 1} λ=1",
        "clean {TA: 1} λ=2",
    }
    run = report["runs"]["noisy {TA: 1} λ=2"]
    assert run["weights"] == {"VQ": 0.0, "MQ": 0.0, "TA": 1.0} and run["strength"] == 2.0
    for judge in ("reward", "oracle"):
        ci = run["win_rate"][judge]["TA"]
        assert ci["n"] == 6 and ci["seeds"] == 2 and 0.0 <= ci["mean"] <= 1.0  # 3 prompts x 2 seeds
    seed1 = json.loads((tmp_path / "b" / "s1" / "nrg.json").read_text())["runs"]["noisy {TA: 1} λ=2"]
    seed0 = json.loads((tmp_path / "b" / "s0" / "nrg.json").read_text())["runs"]["noisy {TA: 1} λ=2"]
    pooled = (sum(seed0["outcomes"]["oracle"]["TA"]) + sum(seed1["outcomes"]["oracle"]["TA"])) / 6
    assert run["win_rate"]["oracle"]["TA"]["mean"] == pytest.approx(pooled)
    claims = {c["claim"]: c["verdict"] for c in report["claims"]}
    assert "noisy {TA: 1} λ=1 raises TA (its heaviest weight) by the oracle" in claims
    assert "noise-aware guides TA better than clean ({TA: 1} λ=2, oracle)" in claims
    for d in ("VQ", "MQ"):  # tied top weights: a claim for each of them, not only the first
        assert f"noisy {{VQ: 0.5, MQ: 0.5}} λ=1 raises {d} (its heaviest weight) by the oracle" in claims
    assert set(claims.values()) <= {"holds", "contradicted", "undecided at this budget"}
    assert report["cost"]["latent_over_unguided"] > 0 and report["cost"]["pixel_over_unguided"] > 0
    assert (tmp_path / "b" / "nrg.md").read_text().startswith("# Flow-NRG")
    assert (tmp_path / "b" / "s0" / "grid.gif").exists()
    capsys.readouterr()
    again = run_nrg_bench(args)  # both seeds read back: the same numbers, nothing sampled
    assert again["runs"] == report["runs"] and capsys.readouterr().out.count("done before") == 2
