"""LiFT fine-tuning pieces: the v-prediction <-> flow conversion (closed forms), the CogVideoX family (shapes, its
scheduler's own targets, LoRA through its pipeline loader), LiFT's step on both families against a hand
computation, the weighted rows (ratings, weight columns, real videos) by hand, and clean SynthPref renders."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from raypipe.config import ConfigError, SynthConfig
from raypipe.flow.diffusion import flow_velocity_of_v, timestep_of, vp_of_flow_time
from raypipe.flow.lift import rating_rows, rating_weight, weight_rows, with_real


# --- the conversion ------------------------------------------------------------------------------------------
def test_flow_time_maps_onto_the_diffusion_path():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, 4, generator=g), torch.randn(5, 3, 4, generator=g)
    s = torch.tensor([0.0, 0.1, 0.5, 0.8, 1.0])
    alpha_bar, scale = vp_of_flow_time(s)
    x_s = (1 - s)[:, None, None] * x0 + s[:, None, None] * eps
    x_t = scale[:, None, None] * x_s
    a, b = alpha_bar.sqrt()[:, None, None], (1 - alpha_bar).sqrt()[:, None, None]
    torch.testing.assert_close(x_t, a * x0 + b * eps, atol=1e-6, rtol=1e-6)
    assert alpha_bar[0] == 1 and alpha_bar[-1] == 0 and alpha_bar[2] == pytest.approx(0.5)
    # the exact v gives the exact flow velocity eps - x0
    v = a * eps - b * x0
    torch.testing.assert_close(flow_velocity_of_v(x_t, v, alpha_bar), eps - x0, atol=1e-5, rtol=1e-5)


def test_timestep_of_inverts_the_table():
    table = torch.tensor([0.99, 0.9, 0.5, 0.1, 0.0])
    tau = timestep_of(torch.tensor([0.99, 0.5, 0.0, 0.7, 0.05, 1.0]), table)
    torch.testing.assert_close(tau, torch.tensor([0.0, 2.0, 4.0, 1.5, 3.5, 0.0]))  # 0.7: halfway 0.9 -> 0.5


# --- the CogVideoX family ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cog(tmp_path_factory):
    from raypipe.flow.families import load_family, make_tiny_generator

    path = make_tiny_generator("cogvideox", tmp_path_factory.mktemp("cog") / "tiny", seed=0)
    return path, load_family(path)


def test_cogvideox_shapes_and_its_schedulers_targets(cog):
    from diffusers import CogVideoXDDIMScheduler

    from raypipe.flow.families import family_of
    from raypipe.flow.losses import v_prediction_noised

    path, gen = cog
    assert family_of(path) == "cogvideox" and gen.prediction == "v"
    assert gen.frames_for(12) == 9 and gen.latent_shape(9, 56, 56) == (4, 3, 14, 14)
    with pytest.raises(ConfigError, match="1 \\+ k·8"):
        gen.latent_shape(5, 56, 56, check=True)
    frames = np.random.default_rng(0).integers(0, 255, (2, 9, 56, 56, 3), dtype=np.uint8)
    z = gen.encode_videos(frames)
    text = gen.encode_prompts(["a red circle moving left", ""])
    assert z.shape == (2, 4, 3, 14, 14) and text.shape == (2, 16, 32)
    assert gen.velocity(z, torch.tensor([0.3, 0.9]), text).shape == z.shape
    assert gen.decode_latents(z).shape == (2, 9, 56, 56, 3)
    # our noising and v target are the scheduler's own add_noise / get_velocity
    sched = CogVideoXDDIMScheduler.from_pretrained(path / "scheduler")
    eps, tau = torch.randn_like(z), torch.tensor([3, 900])
    x_t, v = v_prediction_noised(z, eps, gen.alphas_cumprod[tau])
    torch.testing.assert_close(x_t, sched.add_noise(z, eps, tau), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, sched.get_velocity(z, eps, tau), atol=1e-5, rtol=1e-5)


def test_cogvideox_velocity_is_the_converted_v_prediction(cog):
    _, gen = cog
    z, text = torch.randn(2, 4, 3, 14, 14), gen.encode_prompts(["a", "b"])
    s = torch.tensor([0.25, 0.75])
    alpha_bar, scale = vp_of_flow_time(s)
    x_t = z * scale[:, None, None, None, None]
    v_hat = gen.predict_v(x_t, timestep_of(alpha_bar, gen.alphas_cumprod), text)
    a, b = alpha_bar.sqrt()[:, None, None, None, None], (1 - alpha_bar).sqrt()[:, None, None, None, None]
    expected = (b * x_t + a * v_hat) - (a * x_t - b * v_hat)  # eps_hat - x0_hat
    torch.testing.assert_close(gen.velocity(z, s, text), expected, atol=1e-5, rtol=1e-5)


def test_cogvideox_lora_loads_through_its_pipeline(cog, tmp_path):
    from diffusers import CogVideoXPipeline

    from raypipe.flow.families import load_family
    from raypipe.flow.lora import add_lora, save_lora

    path, _ = cog
    gen = load_family(path)
    add_lora(gen.transformer, r=4, alpha=8, targets=gen.lora_targets)
    with torch.no_grad():
        for name, p in gen.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    z, s, text = torch.randn(1, 4, 3, 14, 14), torch.tensor([0.5]), gen.encode_prompts(["a red circle moving left"])
    want = gen.velocity(z, s, text)
    save_lora(gen, tmp_path / "lora")
    pipe = CogVideoXPipeline.from_pretrained(str(path), local_files_only=True)
    pipe.load_lora_weights(str(tmp_path / "lora"))
    fresh = type(gen)(pipe)
    torch.testing.assert_close(fresh.velocity(z, s, text), want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(load_family(path).velocity(z, s, text), want, atol=1e-4)


# --- LiFT's step on both families ----------------------------------------------------------------------------
def test_lift_step_on_cogvideox_is_the_weighted_v_error(cog):
    from raypipe.flow.training import lift_step_loss

    _, gen = cog
    z, text = torch.randn(3, 4, 3, 14, 14), gen.encode_prompts(["a", "b", "c"])
    weight = torch.tensor([0.9, 0.05, 0.2])
    loss, stats = lift_step_loss(gen, None, z, text, {"weight": weight}, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)  # the same draws, by hand: (x̂0 - x0)²/(1-ᾱ) = (v̂ - v)²
    tau = torch.randint(0, 1000, (3,), generator=g)
    eps = torch.randn(z.shape, generator=g)
    ab = gen.alphas_cumprod[tau][:, None, None, None, None]
    x_t, v = ab.sqrt() * z + (1 - ab).sqrt() * eps, ab.sqrt() * eps - (1 - ab).sqrt() * z
    with torch.no_grad():
        per = (gen.predict_v(x_t, tau.float(), text) - v).pow(2).flatten(1).mean(1)
    assert float(loss.detach()) == pytest.approx(float((weight * per).mean()), rel=1e-4)
    assert stats["mean_weight"] == pytest.approx(float(weight.mean()))


def test_lift_step_on_wan_is_the_weighted_flow_error(tmp_path):
    from raypipe.flow.families import load_family, make_tiny_generator
    from raypipe.flow.losses import sample_t
    from raypipe.flow.training import lift_step_loss

    gen = load_family(make_tiny_generator("wan", tmp_path / "wan"))
    z, text = torch.randn(2, 4, 3, 8, 8), gen.encode_prompts(["a", "b"])
    weight = torch.tensor([1.0, 0.0])
    real = torch.tensor([True, False])
    loss, stats = lift_step_loss(
        gen, None, z, text, {"weight": weight, "is_real": real}, torch.Generator().manual_seed(1)
    )
    g = torch.Generator().manual_seed(1)
    t = sample_t(2, g, gen.shift)
    eps = torch.randn(z.shape, generator=g)
    tt = t[:, None, None, None, None]
    with torch.no_grad():
        err = (gen.velocity((1 - tt) * z + tt * eps, t, text) - (eps - z)).pow(2).flatten(1).mean(1)
    assert float(loss.detach()) == pytest.approx(float(err[0]) / 2, rel=1e-4)  # the weight-0 video adds nothing
    assert stats["real_share"] == 0.5


# --- rows ------------------------------------------------------------------------------------------------------
def test_rating_weights_by_hand():
    equal = {"VQ": 1, "MQ": 1, "TA": 1}
    assert rating_weight({"VQ": "Good", "MQ": "Bad", "TA": "Normal"}, equal) == pytest.approx((0.9 + 0.05 + 0.2) / 3)
    assert rating_weight({"VQ": "Good", "MQ": "Bad", "TA": None}, {"VQ": 2, "MQ": 1}) == pytest.approx(1.85 / 3)
    assert rating_weight({"VQ": "Good", "MQ": None}, equal) is None
    assert rating_weight({"VQ": "Bad"}, {"VQ": 1}, {"Good": 1, "Normal": 0.5, "Bad": 0}) == 0
    with pytest.raises(ConfigError, match="positive"):
        rating_weight({"VQ": "Good"}, {"VQ": 0})
    ratings = pa.table(
        {
            "uri": ["u0", "u1", "u2"],
            "prompt": ["p0", None, "p2"],
            "rating_VQ": ["Good", "Bad", None],
            "rating_MQ": ["Normal", "Good", "Good"],
        }
    )
    rows, counts = rating_rows(ratings, {"VQ": 1, "MQ": 1})
    assert rows.to_pydict() == {
        "uri": ["u0", "u1"],
        "prompt": ["p0", ""],
        "weight": [pytest.approx(0.55), pytest.approx(0.475)],
        "is_real": [False, False],
    }
    assert counts == {"videos": 3, "kept": 2, "dropped_unrated": 1}
    with pytest.raises(ConfigError, match="TA"):
        rating_rows(ratings, {"TA": 1})


def test_weight_rows_pointwise_pairs_and_real():
    point = pa.table({"uri": ["a", "b", "c", "d"], "prompt": ["p"] * 4, "lift_weight": [0.9, None, 0.2, float("nan")]})
    point = point.append_column("error", pa.array([None, None, "decode_failed", None], pa.string()))
    rows, counts = weight_rows(point)
    assert rows.column("uri").to_pylist() == ["a"] and rows.column("weight").to_pylist() == [0.9]
    assert counts == {"videos": 4, "kept": 1, "dropped_error": 1, "dropped_no_weight": 2}
    pairs = pa.table(
        {
            "uri_A": ["a0", "a1"],
            "uri_B": ["b0", "b1"],
            "prompt": ["p0", "p1"],
            "score_A_MQ": [0.0, 2.0],
            "score_B_MQ": [-1.0, None],
            "lift_weight_A": [0.5, 0.6],
            "lift_weight_B": [0.7, 0.8],
        }
    )
    rows, _ = weight_rows(pairs)  # lift_weight -> lift_weight_A / lift_weight_B
    assert rows.column("uri").to_pylist() == ["a0", "a1", "b0", "b1"]
    assert rows.column("weight").to_pylist() == [0.5, 0.6, 0.7, 0.8]
    with pytest.raises(ConfigError, match="negative"):
        weight_rows(pairs, "score_{side}_MQ")
    rows, counts = weight_rows(pairs, "score_{side}_MQ", transform="sigmoid")
    assert rows.column("weight").to_pylist() == pytest.approx([0.5, 1 / (1 + np.exp(-2)), 1 / (1 + np.e)])
    assert counts["dropped_no_weight"] == 1
    with pytest.raises(ConfigError, match="no column 'Overall'"):
        weight_rows(point, "Overall")
    mixed, counts = with_real(rows, counts, pa.table({"uri": ["r0"], "prompt": ["real"]}), 0.9)
    assert mixed.column("is_real").to_pylist() == [False] * 3 + [True]
    assert mixed.column("weight").to_pylist()[-1] == 0.9 and counts["real"] == 1


def test_real_synthpref_videos_are_clean_and_say_what_they_show(tmp_path):
    from raypipe.video.decode import read_all_frames
    from raypipe.video.oracle import judge
    from raypipe.video.synth_real import make_real_synthpref

    table = make_real_synthpref(tmp_path, 3, SynthConfig(seed=3))
    assert table.num_rows == 3 and (tmp_path / "manifest.parquet").exists()
    for path, prompt in zip(table.column("path").to_pylist(), table.column("prompt").to_pylist()):
        verdict = judge(read_all_frames(str(tmp_path / path)), prompt)
        assert verdict["TA"] == 3 and verdict["VQ"] > 0.8 and verdict["MQ"] > 0.8
    again = make_real_synthpref(tmp_path / "again", 2, SynthConfig(seed=3))
    assert again.column("prompt").to_pylist() == table.column("prompt").to_pylist()[:2]
