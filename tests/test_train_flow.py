"""train-flow: training rows per algorithm by hand; a tiny Flow-DPO run on Ray Train + DeepSpeed from a latent cache
through a killed worker, whose LoRA loads with WanPipeline.load_lora_weights and whose curve reaches TensorBoard;
image-to-video DPO on LTX-Video."""

import glob
import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from raypipe.config import ConfigError, load_config
from raypipe.flow.pairs import training_rows
from raypipe.recipes.train_flow import FlowTrainConfig
from raypipe.recipes.train_flow import run as run_train_flow


def _table():
    return pa.table(
        {
            "row_id": pa.array([0, 1, 2], pa.int64()),
            "uri_A": ["a0", "a1", "a0"],
            "uri_B": ["b0", "b1", "b2"],
            "prompt": ["p0", "p1", "p0"],
            "y_MQ": pa.array([1, -1, 0], pa.int8()),
            "MOS_A_MQ": [4.0, 2.0, 3.0],
            "MOS_B_MQ": [1.0, 5.0, None],
        }
    )


def test_training_rows_per_algo():
    rows, counts = training_rows(_table(), "pretrain", "labels", {"MQ": 1.0})
    assert rows.num_rows == 5 and counts["videos"] == 5  # (a0, p0) appears twice: once
    assert counts["captions"] == "pair prompts"
    gt = _table()
    for side, attrs in (("A", ("red", "circle", "left")), ("B", ("blue", "square", "up"))):
        for name, value in zip(("color", "shape", "direction"), attrs):
            gt = gt.append_column(f"gt_{name}_{side}", pa.array([value] * 3))
    rows, counts = training_rows(gt, "pretrain", "labels", {"MQ": 1.0})
    assert counts["captions"] == "true attributes (gt_*)"
    assert (
        dict(zip(rows.column("uri").to_pylist(), rows.column("prompt").to_pylist()))["b1"] == "a blue square moving up"
    )
    assert rows.num_rows == 5
    rows, counts = training_rows(_table(), "sft", "labels", {"MQ": 1.0})
    assert rows.column("uri").to_pylist() == ["a0", "b1"] and counts["dropped_tie"] == 1
    rows, _ = training_rows(_table(), "dpo", "labels", {"MQ": 1.0})
    assert rows.to_pydict() == {"uri_w": ["a0", "b1"], "uri_l": ["b0", "a1"], "prompt": ["p0", "p1"]}
    rows, counts = training_rows(_table(), "rwr", "labels", {"MQ": 2.0})
    assert rows.column("reward").to_pylist() == [8.0, 4.0, 6.0, 2.0, 10.0]
    assert counts["dropped_no_score"] == 1
    with pytest.raises(ConfigError, match="per-video scores"):
        training_rows(_table(), "rwr", "labels", {"VQ": 1.0})
    with pytest.raises(ConfigError, match="algo"):
        training_rows(_table(), "ppo", "labels", {"MQ": 1.0})


@pytest.mark.slow
def test_flow_dpo_from_a_latent_cache_survives_a_killed_worker(ray_local, tmp_path):
    """Flow-DPO on the tiny Wan from a latent cache (equal to encoding on the fly; a mismatched reuse is refused),
    a worker SIGKILLed after the first checkpoint: the group restarts from it with the optimizer step and the data
    position restored (no row of an epoch consumed twice or skipped); the curve reaches TensorBoard and the LoRA
    result loads with WanPipeline.load_lora_weights. (Step 1's loss = log 2: the image-to-video test below.)"""
    import threading

    import pyarrow.parquet as pq

    from raypipe.config import ClipConfig
    from raypipe.data.tables import tensor_of
    from raypipe.flow.family import WanFamily
    from raypipe.flow.pairs import generator_clip
    from tests.conftest import kill_a_train_worker_after_first_checkpoint

    out = tmp_path / "flow"
    common = ["synth.pairs=32", "data.weights={VQ: 1.0}", "clip.frames=5", "clip.height=32", "clip.width=32"]
    common += ["data.latent_cache=cache", f"out={out}", "progress=false"]
    train = ["train.batch=2", "train.epochs=2", "train.checkpoint_every=2", "train.log_every=2"]
    train += ["train.max_failures=1", "train.record_rows=true"]
    cfg = load_config(FlowTrainConfig, "configs/flow_tiny.yaml", common + train)
    killed: list = []
    killer = threading.Thread(
        target=kill_a_train_worker_after_first_checkpoint, args=(out / "ray_results" / "train-flow-dpo", killed, 900)
    )
    killer.start()
    summary = run_train_flow(cfg)
    killer.join()
    assert killed, "the test never managed to kill a worker"
    per_worker = summary["rows"] // 2
    assert summary["steps"] == 2 * (per_worker // 2)
    assert len(summary["resumes"]) == 1
    resume = summary["resumes"][0]
    assert resume["at_step"] >= 2 and resume["engine_global_steps"] == resume["at_step"]
    ckpts = sorted(p for p in (out / "ray_results" / "train-flow-dpo").glob("checkpoint_*") if p.is_dir())
    rows = json.loads((ckpts[-1] / "progress.json").read_text())["rows"]
    for epoch, consumed in rows.items():
        assert len(consumed) == len(set(consumed)) == per_worker // 2 * 2, (epoch, consumed)
    curve = json.loads((out / "curve.json").read_text())
    assert curve and all({"loss", "implicit_acc", "reward_margin"} <= set(p) for p in curve)
    assert glob.glob(str(out / "tensorboard" / "events.out.tfevents.*"))
    # the cache: built once, the rows' latents as encoding on the fly gives them
    cache = pq.read_table(out / "cache")
    assert cache.num_rows == summary["rows"] and {"latents_w", "latents_l", "text", "uri_w"} <= set(cache.column_names)
    gen = WanFamily.load(summary["generator"])
    row = cache.slice(0, 1)
    clip = generator_clip(row.column("uri_w")[0].as_py(), ClipConfig(frames=5, height=32, width=32))
    np.testing.assert_allclose(tensor_of(row, "latents_w"), gen.encode_videos(clip[None]).numpy(), atol=1e-5)
    # the LoRA result loads with diffusers' own loader and changes the velocity
    z, text = torch.randn(1, 4, 3, 8, 8), gen.encode_prompts(["a red circle moving left"])
    base = gen.velocity(z, torch.tensor([0.5]), text)
    gen.pipeline.load_lora_weights(str(out / "final"))
    assert (gen.velocity(z, torch.tensor([0.5]), text) - base).abs().max() > 0
    # same cache folder, other rows (another algorithm's): refused
    with pytest.raises(ConfigError, match="latent cache"):
        run_train_flow(load_config(FlowTrainConfig, "configs/flow_tiny.yaml", common + ["train.algo=pretrain"]))


def test_dpo_step_with_real_videos_mixed_in(tmp_path):
    """At init (policy = reference) the DPO part is log 2 exactly, so the loss is log 2 + λ·(the real rows' flow
    error); real rows come from with_real_pairs with themselves on both sides."""
    from types import SimpleNamespace

    from raypipe.flow.families import load_family, make_tiny_generator
    from raypipe.flow.lora import add_lora
    from raypipe.flow.pairs import with_real_pairs
    from raypipe.flow.training import algo_loss

    rows, counts = with_real_pairs(
        pa.table({"uri_w": ["w0"], "uri_l": ["l0"], "prompt": ["p"], "r": [1.0]}),
        {"videos": 2},
        pa.table({"uri": ["real0", "real1"], "prompt": ["q0", "q1"]}),
    )
    assert rows.to_pydict() == {
        "uri_w": ["w0", "real0", "real1"],
        "uri_l": ["l0", "real0", "real1"],
        "prompt": ["p", "q0", "q1"],
        "is_real": [False, True, True],
    }
    assert counts == {"videos": 2, "real": 2}
    gen = load_family(make_tiny_generator("wan", tmp_path / "wan"))
    add_lora(gen.transformer, r=4, alpha=4)

    class Engine(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, **kwargs):
            return self.module(**kwargs)

    z_w, z_l = torch.randn(3, 4, 3, 8, 8), torch.randn(3, 4, 3, 8, 8)
    real = torch.tensor(rows.column("is_real").to_pylist())
    tensors = {"z_w": z_w, "z_l": z_l, "text": gen.encode_prompts(["p", "q0", "q1"]), "is_real": real}
    t_cfg = SimpleNamespace(algo="dpo", beta=500.0, beta_schedule="constant", lambda_sft=0.5)
    loss, stats = algo_loss(gen, Engine(gen.transformer), t_cfg, tensors, torch.Generator().manual_seed(0))
    assert stats["real_share"] == pytest.approx(2 / 3) and stats["sft_loss"] > 0
    assert float(loss.detach()) == pytest.approx(np.log(2) + 0.5 * stats["sft_loss"], rel=1e-5)


def test_lambda_sft_needs_real_videos(tmp_path):
    cfg = load_config(
        FlowTrainConfig, "configs/flow_tiny.yaml", ["synth.pairs=4", "train.lambda_sft=0.5", f"out={tmp_path}"]
    )
    with pytest.raises(ConfigError, match="lambda_sft needs real videos"):
        run_train_flow(cfg)


@pytest.mark.slow
def test_image_to_video_dpo_from_first_frames(ray_local, tmp_path):
    """synth.i2v: both videos of a pair start on one image; data.image=first_frame packs it into every cached prompt
    (equal to the winner's first frame's latent) and Flow-DPO trains on LTX-Video conditioned on it."""
    import pyarrow.parquet as pq

    from raypipe.data.tables import tensor_of
    from raypipe.flow.conditioning import split_image
    from raypipe.flow.families import load_family
    from raypipe.flow.pairs import generator_clip

    common = ["synth.pairs=24", "synth.i2v=true", "clip.frames=5", "clip.height=32", "clip.width=32"]
    common += ["data.image=first_frame", "family=ltx", f"out={tmp_path / 'flow'}", "progress=false"]
    summary = run_train_flow(
        load_config(
            FlowTrainConfig,
            "configs/flow_tiny.yaml",
            common + ["train.batch=2", "train.max_steps=2", "train.log_every=1", "data.latent_cache=cache"],
        )
    )
    assert summary["steps"] == 2 and summary["error_rows"] == 0
    curve = json.loads((tmp_path / "flow" / "curve.json").read_text())
    assert curve[0]["loss"] == pytest.approx(np.log(2), abs=1e-4)
    cache = pq.read_table(tmp_path / "flow" / "cache")
    gen = load_family(summary["generator"])
    from raypipe.config import ClipConfig

    clip = ClipConfig(frames=5, height=32, width=32)
    for k in (0, cache.num_rows - 1):
        row = cache.slice(k, 1)
        text, image = split_image(torch.from_numpy(tensor_of(row, "text")), gen.max_text_len)
        w, lose = (generator_clip(row.column(c)[0].as_py(), clip) for c in ("uri_w", "uri_l"))
        assert np.abs(w[0].astype(int) - lose[0]).mean() < 2  # the pair shares its first frame (up to H.264)
        torch.testing.assert_close(image, gen.encode_videos(w[None, :1]), rtol=1e-4, atol=1e-4)
    # A text-to-video generator is refused before anything starts.
    with pytest.raises(ConfigError, match="text-to-video only"):
        run_train_flow(load_config(FlowTrainConfig, "configs/flow_tiny.yaml", common[:-3] + ["data.image=first_frame",
                       f"out={tmp_path / 'wan'}", "progress=false"]))  # fmt: skip


def test_decoded_clips_carry_the_conditioning_image(tmp_path):
    """Without a latent cache the decode stage adds an `image` column (the winner's first frames) and the worker's
    text_of packs it, as the cache does."""
    from raypipe.config import ClipConfig, SynthConfig
    from raypipe.distributed.decode import decode_clips_block
    from raypipe.flow.conditioning import split_image
    from raypipe.flow.families import load_family, make_tiny_generator
    from raypipe.flow.training import text_of
    from raypipe.video.synth import make_synthpref

    table = make_synthpref(tmp_path / "synth", SynthConfig(pairs=2, seed=3, i2v=True, frames=6, size="32x32"))
    uris = [str(tmp_path / "synth" / p) for p in table.column("path_A").to_pylist()]
    rows = pa.table({"uri_w": uris, "uri_l": uris[::-1], "prompt": table.column("prompt")})
    clip = ClipConfig(frames=5, height=32, width=32)
    batch = decode_clips_block(rows, clip, {"uri_w": "frames_w", "uri_l": "frames_l"}, image_from="frames_w")
    from raypipe.data.tables import clips_of
    from raypipe.flow.wan_build import TinyWanConfig

    prompts, first = rows.column("prompt").to_pylist(), clips_of(batch, "frames_w")[:, 0]
    gen = load_family(make_tiny_generator("ltx", tmp_path / "ltx"))
    words, image = split_image(text_of(gen, batch, prompts, 0.0, torch.Generator()), gen.max_text_len)
    torch.testing.assert_close(words, gen.encode_prompts(prompts))
    torch.testing.assert_close(image, gen.encode_videos(first[:, None]), rtol=1e-4, atol=1e-4)
    # Wan2.1 I2V conditions on the whole clip: the clip's frame count reaches its encoder
    wan = load_family(make_tiny_generator("wan", tmp_path / "wan21_i2v", TinyWanConfig.wan21_i2v_tiny()))
    torch.testing.assert_close(
        text_of(wan, batch, prompts, 0.0, torch.Generator()), wan.encode_prompts(prompts, images=first, frames=5)
    )
