"""What the GPU path relies on, checked on a CPU: bf16 models built like `from_pretrained` builds them, inputs cast
to the model's compute dtype (not its first parameter's), a float32 timestep, DeepSpeed's whole-module bf16 cast,
gradient checkpointing that changes memory but not gradients, and `raypipe bench gpu` at tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from raypipe.flow.family import WanFamily
from raypipe.flow.wan_build import TinyWanConfig, build_random_wan


def _family(dtype: str) -> WanFamily:
    cfg = TinyWanConfig()
    return WanFamily(build_random_wan(cfg, seed=0, dtype=dtype), max_text_len=cfg.max_text_len, shift=cfg.shift)


def _inputs(gen: WanFamily, n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, 4, 3, 8, 8), generator=g)
    t = torch.rand(n, generator=g)
    text = torch.randn((n, 16, gen.transformer.config.text_dim), generator=g)
    return z, t, text


def test_bf16_wan_keeps_float32_modules_and_velocity_runs():
    fp32, bf16 = _family("float32"), _family("bfloat16")
    keep = set(bf16.transformer._keep_in_fp32_modules)
    dtypes = {n: p.dtype for n, p in bf16.transformer.named_parameters()}
    kept = [n for n in dtypes if keep & set(n.split("."))]
    assert kept and all(dtypes[n] == torch.float32 for n in kept)
    assert all(dtypes[n] == torch.bfloat16 for n in dtypes if n not in kept)
    # the first parameter is one of the float32 ones: inputs must follow the model's compute dtype instead
    assert next(bf16.transformer.parameters()).dtype == torch.float32
    seen = {}

    def grab(_module, _args, kwargs):
        seen.update(hidden=kwargs["hidden_states"].dtype, timestep=kwargs["timestep"].clone())

    bf16.transformer.register_forward_pre_hook(grab, with_kwargs=True)
    z, t, text = _inputs(fp32)
    with torch.no_grad():
        v_bf16 = bf16.velocity(z, t, text)
        v_fp32 = fp32.velocity(z, t, text)
    assert seen["hidden"] == torch.bfloat16
    # 1000·t reaches diffusers in float32, exactly (bf16 would round 1000·t to steps of up to 4)
    assert seen["timestep"].dtype == torch.float32 and torch.equal(seen["timestep"], 1000.0 * t)
    assert v_bf16.dtype == torch.float32 and v_bf16.shape == z.shape
    rel = (v_bf16 - v_fp32).norm() / v_fp32.norm()
    assert float(rel) < 0.05  # same weights, bf16 rounding only


def test_latent_reward_follows_a_whole_module_bf16_cast():
    """DeepSpeed's bf16 mode casts every parameter (norm and heads too); the forward must still run."""
    from raypipe.nrg.model import LatentReward

    gen = _family("float32")
    model = LatentReward.from_generator(gen.transformer, ("VQ", "MQ", "TA"), k_blocks=1)
    z, t, text = _inputs(gen)
    ref = model(z, t, text)
    model.to(torch.bfloat16)
    out = model(z, t, text)
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    assert float((out - ref).abs().max().detach()) < 0.1 * float(ref.abs().max().detach()) + 0.05


def _grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _same(a, b, tol=1e-5):
    (la, ga), (lb, gb) = a, b
    assert la == pytest.approx(lb, rel=1e-6)
    assert ga.keys() == gb.keys() and ga
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=tol, atol=tol, msg=name)


def test_gradient_checkpointing_leaves_gradients_unchanged(tmp_path):
    import numpy as np

    from raypipe.nrg.model import LatentReward
    from raypipe.reward.model import RewardModelConfig, VideoReward

    # latent reward (our own checkpointed loop over the K blocks)
    gen = _family("float32")
    lr = LatentReward.from_generator(gen.transformer, ("VQ", "MQ", "TA"), k_blocks=2)
    z, t, text = _inputs(gen)
    plain = _grads(lr, lambda: lr(z, t, text).pow(2).sum())
    lr.gradient_checkpointing = True
    _same(plain, _grads(lr, lambda: lr(z, t, text).pow(2).sum()))

    # generator transformer (diffusers' checkpointing, as train-flow turns it on)
    gen.transformer.requires_grad_(True)
    plain = _grads(gen.transformer, lambda: gen.velocity(z, t, text).pow(2).mean())
    gen.transformer.enable_gradient_checkpointing()
    _same(plain, _grads(gen.transformer, lambda: gen.velocity(z, t, text).pow(2).mean()))

    # reward model: LoRA on the language model, vision tower trainable
    model = VideoReward.build(RewardModelConfig(), tiny_dir=tmp_path / "tiny")
    model.train()
    rng = np.random.default_rng(0)
    batch = model.processor(
        [rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8) for _ in range(2)],
        ["a red circle moving left", "a blue square moving up"],
    )
    plain = _grads(model, lambda: model(batch).pow(2).sum())
    model.enable_gradient_checkpointing()
    _same(plain, _grads(model, lambda: model(batch).pow(2).sum()))


@pytest.mark.slow
def test_bench_gpu_tiny_runs_every_part_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    # a subprocess: the bench makes its own one-rank process group
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "raypipe.bench.gpu",
            "--out",
            str(out),
            "--size",
            "tiny",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--reward-batches",
            "1,2",
            "--flow-batches",
            "1",
            "--nrg-steps",
            "2",
            "--reward-conventions",  # the released model's inputs (a stand-in instruction text of its length)
            "videoalign",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["size"] == "tiny" and report["backend"] == "gloo" and report["dtype"] == "float32"
    reward, flow, nrg = report["reward"], report["flow"], report["nrg"]
    assert [(r["gradient_checkpointing"], r["pairs"]) for r in reward["train"]] == [
        (True, 1),
        (True, 2),
        (False, 1),
        (False, 2),
    ]
    assert all(
        r["s_per_step"] > 0 and r["pairs_per_s"] == pytest.approx(r["pairs"] / r["s_per_step"], rel=1e-2)
        for r in reward["train"]
    )
    assert reward["scoring"]["videos_per_s"] > 0 and 0 < reward["trainable_params"] < reward["params"]
    assert (reward["conventions"]["template"], reward["conventions"]["positions"]) == ("videoalign", "1d")
    assert reward["video"]["tokens_per_sequence"] > 600  # the stand-in is as long as the official text
    # LoRA r=64 on to_q/k/v/out of both attentions of the 2 tiny blocks, every one 32 -> 32: 16 x 64 x (32 + 32)
    assert flow["trainable_params"] == 16 * 64 * 64
    assert [(r["algo"], r["gradient_checkpointing"]) for r in flow["train"]] == [
        ("dpo", True),
        ("sft", True),
        ("rwr", True),
        ("dpo", False),
    ]
    assert all(r["s_per_step"] > 0 for r in flow["train"])
    # 3 grid steps; the first (t = 1) is never guided
    assert [r["guided_steps_per_run"] for r in nrg["rows"]] == [0, 2]
    assert len(nrg["train"]) == 4 and all(r["s_per_step"] > 0 for r in nrg["train"])
    assert "guided/unguided" in proc.stdout


def test_bench_gpu_flow_runs_for_every_family(tmp_path):
    """`bench gpu --family` at tiny shapes: the same DPO/SFT/RWR steps through each family's classes (A14B: both
    experts with LoRA, so twice the adapters of one), one family after the other in one process."""
    out = tmp_path / "gpu.json"
    families = ["wan22-ti2v-5b", "wan22-a14b", "hunyuan-video", "ltx-video", "wan21-i2v-14b", "wan22-i2v-a14b"]
    families += ["hunyuan-video-15", "ltx-2"]
    argv = ["--out", str(out), "--size", "tiny", "--parts", "flow", "--family", ",".join(families), "--steps", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "raypipe.bench.gpu", *argv, "--warmup", "0", "--flow-batches", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report) >= {"flow", *(f"flow:{f}" for f in families[1:])}
    # LoRA r=64 on 32 -> 32 projections (64·64 each): Wan's 16 (x2 experts for A14B); HunyuanVideo's 11 (q/k/v/o of
    # the dual-stream block and the text refiner, q/k/v of the single-stream block); LTX's 16 (2 blocks x 2
    # attentions x q/k/v/o); HunyuanVideo 1.5's 8 (q/k/v/o of its one dual-stream block and of the text refiner);
    # LTX-2's 16 (2 blocks x the video stream's self- and text-attention x q/k/v/o; none of the audio stream's)
    lora = {"wan22-ti2v-5b": 16, "wan22-a14b": 32, "hunyuan-video": 11, "ltx-video": 16, "hunyuan-video-15": 8}
    lora["ltx-2"] = 16
    lora |= {"wan21-i2v-14b": 16, "wan22-i2v-a14b": 32}  # I2V: the same projections (image attention's not targeted)
    for family in families:
        flow = report["flow" if family == families[0] else f"flow:{family}"]
        assert flow["family"] == family and len(flow["train"]) == 4
        assert all(r["s_per_step"] > 0 for r in flow["train"])
        assert flow["trainable_params"] == 64 * 64 * lora[family]
        c, t, h, w = flow["latent"]  # 9 x 32 x 32 clips; LTX's, LTX-2's and HunyuanVideo 1.5's transformers take 1 x 1
        assert flow["tokens_per_video"] == t * h * w // (
            1 if family in ("ltx-video", "hunyuan-video-15", "ltx-2") else 4
        )
    assert "flow:hunyuan-video" in proc.stdout and "flow:hunyuan-video-15" in proc.stdout  # every family is printed
    assert report["flow:ltx-2"]["latent"] == [8, 5, 4, 4]  # the tiny LTX-2: 8 channels, spatial 8, temporal 2
