"""`raypipe bench gpu`: the GPU path of every trainable model at its real size, on one device, without Ray.

    raypipe bench gpu --out bench-out/gpu.json                 # on a GPU machine: real shapes, bf16, NCCL
    raypipe bench gpu --out /tmp/gpu.json --size tiny          # anywhere: the same code at tiny shapes (CPU, gloo)
    python -m raypipe.bench.gpu --out gpu.json                 # the same, where Ray is not installed

Random weights at the shapes of the real checkpoints (nothing is downloaded):
- reward: VideoReward on a Qwen2-VL-2B-shaped backbone (LoRA r=64 on the language model, the vision tower and the
  reward tokens trained, SPEC §3.1) in a DeepSpeed ZeRO-2 engine over a one-rank NCCL group; videos of 8 frames
  at 448x448 (2 fps x 4 s, the 2B preset's pixel budget) -> 1024 video tokens each. Per setting (pairs per step,
  gradient checkpointing on/off): seconds per step, pairs/s, peak GPU memory; then scoring videos/s (eval, bf16).
- flow: Flow-DPO / SFT / Flow-RWR steps (`raypipe.train.flow_loop.algo_loss`, the function train-flow runs) on a
  Wan2.1-T2V-1.3B-shaped transformer with LoRA r=64 on q/k/v/o, 33x480x832 clips (latents 16x9x60x104, 14040
  tokens), cached text embeddings (226 x 4096): seconds per step and peak memory per batch size, with and
  without gradient checkpointing.
- nrg: the Flow-NRG sampler (`raypipe.flow.sampler.sample` + `raypipe.nrg.guidance.RewardGuidance`) with a latent
  reward on the generator's first 8 blocks: seconds per denoising step with CFG, unguided vs guided; then that
  latent reward's training step (`raypipe.nrg.train_job.pair_loss`, BTT on noisy pairs, ZeRO-2).

Settings run from the least to the most memory; the first out-of-memory one ends its sweep (recorded as "oom").
Results go to OUT (JSON, rewritten after every part) and a table is printed.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import time
from pathlib import Path

PARTS = ("reward", "flow", "nrg")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="JSON output path")
    p.add_argument("--size", choices=["real", "tiny"], default=None,
                   help="model shapes: real (Qwen2-VL-2B, Wan2.1-1.3B; needs a GPU) or tiny (default: real on a "
                        "GPU, tiny otherwise)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)} (default: all)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per setting, after --warmup (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--reward-batches", default="1,2,4,8", dest="reward_batches",
                   help="pairs per step to try for the reward model (default 1,2,4,8)")
    p.add_argument("--flow-batches", default="1,2,4", dest="flow_batches",
                   help="pairs (DPO) per step to try for the generator (default 1,2,4; SFT/RWR use 2x videos)")
    p.add_argument("--nrg-steps", type=int, default=4, dest="nrg_steps", help="denoising steps timed (default 4)")


# --- shapes ------------------------------------------------------------------------------------------------------
def shapes(size: str) -> dict:
    if size == "real":
        return {"reward_frames": (8, 448, 448), "score_batch": 16, "clip": (33, 480, 832), "text_len": 226,
                "k_blocks": 8}
    return {"reward_frames": (4, 56, 56), "score_batch": 4, "clip": (9, 32, 32), "text_len": 16, "k_blocks": 1}


def qwen2vl_2b_config(tokenizer):
    """Qwen2-VL-2B-Instruct's architecture (config.json of the release), special-token ids from `tokenizer`."""
    from transformers import Qwen2VLConfig

    from raypipe.reward.backbone import IM_END, IM_START, IMAGE_PAD, PAD, VIDEO_PAD, VISION_END, VISION_START

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (IM_START, IM_END, PAD, IMAGE_PAD, VIDEO_PAD,
                                                            VISION_START, VISION_END)}
    return Qwen2VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                         rms_norm_eps=1e-6, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                          "mrope_section": [16, 24, 24]},
                         bos_token_id=ids[IM_START], eos_token_id=ids[IM_END], pad_token_id=ids[PAD]),
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_chans=3),
        image_token_id=ids[IMAGE_PAD], video_token_id=ids[VIDEO_PAD], vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END], bos_token_id=ids[IM_START], eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD], tie_word_embeddings=True)


def random_reward(size: str, device, dtype: str):
    """A VideoReward (trainable parts configured as in training) on a random backbone built on `device`."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from raypipe.reward.backbone import build_tiny_tokenizer
    from raypipe.reward.model import RewardModelConfig, VideoReward
    from raypipe.reward.processor import RewardProcessor

    cfg = RewardModelConfig(dtype=dtype, instruction="Please evaluate the video for visual quality, motion "
                                                     "quality and alignment with the prompt:")
    torch.manual_seed(0)
    if size != "real":
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            return VideoReward.build(cfg, tiny_dir=d).to(device)
    tokenizer = build_tiny_tokenizer()
    with torch.device(device):  # 2.2B random weights drawn on the GPU: seconds, not a minute on the CPU
        backbone = Qwen2VLForConditionalGeneration._from_config(qwen2vl_2b_config(tokenizer),
                                                                dtype=getattr(torch, dtype))
    processor = RewardProcessor(tokenizer, cfg.dimensions, cfg.context_agnostic, cfg.head, cfg.instruction)
    model = VideoReward(backbone, processor, cfg)
    model.configure_trainable()
    return model.to(device)


# --- the one-rank process group and engines ----------------------------------------------------------------------
def init_single_rank(backend: str) -> None:
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend=backend)


def engine_for(model, settings, bf16: bool, micro_batch: int):
    import deepspeed

    from raypipe.train.common import deepspeed_config

    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(settings, 1000, bf16=bf16, micro_batch=micro_batch))
    return engine


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2) if device.type == "cuda" else None


def timed(step, device, steps: int, warmup: int) -> dict:
    """Run `step()` warmup + steps times; the median and mean seconds of the timed ones, and the peak memory."""
    import statistics

    _reset_peak(device)
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"s_per_step": round(statistics.median(times), 4), "s_mean": round(statistics.fmean(times), 4),
            "peak_gib": _peak_gib(device)}


def sweep(settings: list[dict], run_one, device) -> list[dict]:
    """`run_one(setting) -> dict` for each setting in order; an out-of-memory one is recorded and ends the sweep
    of its `group` (the later, larger settings of the same group are skipped)."""
    import torch

    rows, dead = [], set()
    for s in settings:
        if s.get("group") in dead:
            rows.append({**s, "result": "skipped (a smaller setting ran out of memory)"})
            continue
        try:
            rows.append({**s, **run_one(s)})
        except torch.OutOfMemoryError:
            rows.append({**s, "result": "oom"})
            dead.add(s.get("group"))
            _reset_peak(device)
        print("  ", json.dumps(rows[-1]), flush=True)
    return rows


# --- parts -------------------------------------------------------------------------------------------------------
def bench_reward(args, size: str, device, dtype: str) -> dict:
    import numpy as np
    import torch

    from raypipe.reward.losses import reward_loss
    from raypipe.train.reward_config import TrainSettings

    sh = shapes(size)
    t0 = time.perf_counter()
    model = random_reward(size, device, dtype)
    build_s = time.perf_counter() - t0
    n_total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    settings = TrainSettings(zero_stage=2, lr=2e-6, warmup_ratio=0.05, batch_pairs=4)
    engine = engine_for(model, settings, bf16=dtype == "bfloat16", micro_batch=4)
    rng = np.random.default_rng(0)
    frames_shape = (*sh["reward_frames"], 3)
    prompt = "a red circle moving left"

    def batch_of(pairs: int):
        videos = [rng.integers(0, 256, frames_shape, dtype=np.uint8) for _ in range(2 * pairs)]
        inputs = model.processor(videos, [prompt] * (2 * pairs))
        y = torch.tensor(rng.integers(-1, 2, (pairs, 3)), dtype=torch.long, device=device)
        return {k: v.to(device) for k, v in inputs.items()}, y, torch.ones_like(y, dtype=torch.bool)

    tokens = int(model.processor([np.zeros(frames_shape, np.uint8)], [prompt])["input_ids"].shape[1])

    def run_one(s: dict) -> dict:
        if s["gradient_checkpointing"]:
            model.enable_gradient_checkpointing()
        else:
            model.disable_gradient_checkpointing()
        engine.train()
        inputs, y, mask = batch_of(s["pairs"])

        def step():
            r = engine(inputs)
            loss, _ = reward_loss("btt", r[:s["pairs"]], r[s["pairs"]:], y, mask, 5.0)
            engine.backward(loss)
            engine.step()

        out = timed(step, device, args.steps, args.warmup)
        out["pairs_per_s"] = round(s["pairs"] / out["s_per_step"], 3)
        return out

    batches = [int(b) for b in args.reward_batches.split(",")]
    settings_list = [{"group": gc_on, "gradient_checkpointing": gc_on, "pairs": b}
                     for gc_on in (True, False) for b in batches]
    train_rows = sweep(settings_list, run_one, device)
    model.disable_gradient_checkpointing()

    engine.eval()
    videos = [rng.integers(0, 256, frames_shape, dtype=np.uint8) for _ in range(sh["score_batch"])]
    score_inputs = {k: v.to(device) for k, v in model.processor(videos, [prompt] * len(videos)).items()}

    def score():
        with torch.no_grad():
            engine(score_inputs)

    scoring = timed(score, device, args.steps, args.warmup)
    scoring["videos_per_s"] = round(sh["score_batch"] / scoring["s_per_step"], 2)
    scoring["batch"] = sh["score_batch"]
    engine = model = None  # free before the next part (the closures above hold these names)
    _reset_peak(device)
    return {"model": "VideoReward on Qwen2-VL-2B shapes" if size == "real" else "VideoReward (tiny)",
            "params": n_total, "trainable_params": n_train, "build_s": round(build_s, 1),
            "video": {"frames": frames_shape[0], "height": frames_shape[1], "width": frames_shape[2],
                      "tokens_per_sequence": tokens},
            "zero_stage": 2, "train": train_rows, "scoring": scoring}


def _random_family(size: str, device, dtype: str):
    from raypipe.flow.family import TinyWanConfig, WanFamily, build_random_wan

    cfg = TinyWanConfig.wan21_1_3b() if size == "real" else TinyWanConfig()
    pipe = build_random_wan(cfg, seed=0, dtype=dtype, device=str(device))
    return WanFamily(pipe, max_text_len=cfg.max_text_len, shift=cfg.shift)


def bench_flow(args, size: str, device, dtype: str) -> dict:
    import torch

    from raypipe.flow.lora import add_lora
    from raypipe.nrg.generate import latent_shape
    from raypipe.train.flow_config import FlowTrainSettings
    from raypipe.train.flow_loop import algo_loss

    sh = shapes(size)
    t0 = time.perf_counter()
    gen = _random_family(size, device, dtype)
    build_s = time.perf_counter() - t0
    add_lora(gen.transformer, 64, 128, 0.0, gen.lora_targets)
    n_total = sum(p.numel() for p in gen.transformer.parameters())
    n_train = sum(p.numel() for p in gen.transformer.parameters() if p.requires_grad)
    settings = FlowTrainSettings(algo="dpo", zero_stage=2, lr=5e-6, batch=4, beta=500.0)
    engine = engine_for(gen.transformer, settings, bf16=dtype == "bfloat16", micro_batch=4)
    z_shape = latent_shape(gen, *sh["clip"])
    text_dim = int(gen.transformer.config.text_dim)
    generator = torch.Generator().manual_seed(0)

    def run_one(s: dict) -> dict:
        if s["gradient_checkpointing"]:
            gen.transformer.enable_gradient_checkpointing()
        else:
            gen.transformer.disable_gradient_checkpointing()
        engine.train()
        n = s["pairs"]
        t_cfg = FlowTrainSettings(algo=s["algo"], beta=500.0, tau=1.0)
        text = torch.randn((n, sh["text_len"], text_dim)) * 0.1
        if s["algo"] == "dpo":
            tensors = {"z_w": torch.randn((n, *z_shape)), "z_l": torch.randn((n, *z_shape)), "text": text}
        else:  # the same number of videos through the policy as DPO's 2n, without the reference pass
            tensors = {"z": torch.randn((2 * n, *z_shape)), "text": torch.cat([text, text]),
                       "reward": torch.randn(2 * n)}

        def step():
            loss, _ = algo_loss(gen, engine, t_cfg, tensors, generator)
            engine.backward(loss)
            engine.step()

        out = timed(step, device, args.steps, args.warmup)
        out["videos_per_s"] = round(2 * n / out["s_per_step"], 3)
        return out

    batches = [int(b) for b in args.flow_batches.split(",")]
    settings_list = [{"group": ("dpo", True), "algo": "dpo", "gradient_checkpointing": True, "pairs": b}
                     for b in batches]
    settings_list += [{"group": (algo, True), "algo": algo, "gradient_checkpointing": True, "pairs": batches[-1]}
                      for algo in ("sft", "rwr")]
    settings_list += [{"group": ("dpo", False), "algo": "dpo", "gradient_checkpointing": False, "pairs": b}
                      for b in batches]
    rows = sweep(settings_list, run_one, device)
    for r in rows:
        r["group"] = list(r["group"])
    engine = gen = None
    _reset_peak(device)
    return {"model": "Wan2.1-T2V-1.3B transformer shapes + LoRA r=64" if size == "real" else "tiny Wan",
            "params": n_total, "trainable_params": n_train, "build_s": round(build_s, 1),
            "clip": dict(zip(("frames", "height", "width"), sh["clip"])), "latent": list(z_shape),
            "tokens_per_video": int(z_shape[1] * (z_shape[2] // 2) * (z_shape[3] // 2)),
            "zero_stage": 2, "train": rows}


def bench_nrg(args, size: str, device, dtype: str) -> dict:
    import torch

    from raypipe.flow.sampler import sample
    from raypipe.nrg.generate import latent_shape
    from raypipe.nrg.guidance import RewardGuidance
    from raypipe.nrg.model import LatentReward

    sh = shapes(size)
    gen = _random_family(size, device, dtype)
    gen.transformer.eval().requires_grad_(False)
    reward = LatentReward.from_generator(gen.transformer, ("VQ", "MQ", "TA"), k_blocks=sh["k_blocks"])
    reward = reward.to(device).eval().requires_grad_(False)
    z_shape = latent_shape(gen, *sh["clip"])
    text_dim = int(gen.transformer.config.text_dim)
    text = (torch.randn((1, sh["text_len"], text_dim)) * 0.1).to(device)
    uncond = torch.zeros_like(text)
    noise = torch.randn((1, *z_shape), generator=torch.Generator().manual_seed(0))
    rows = []
    for name, weights, strength in (("unguided", {}, 0.0), ("guided", {"VQ": 0.1, "MQ": 0.1, "TA": 0.8}, 1.0)):
        guide = RewardGuidance(reward, text, weights, strength)

        def run():
            # steps + 1 grid points: the first step (t = 1) is never guided, so time steps + 1 and subtract it
            sample(gen.velocity, text, uncond, noise.shape, steps=args.nrg_steps + 1, cfg_scale=5.0,
                   shift=gen.shift, noise=noise, guidance=guide)

        out = timed(run, device, 1, 1)
        out["s_per_denoising_step"] = round(out["s_per_step"] / (args.nrg_steps + 1), 4)
        rows.append({"sampler": name, "denoising_steps": args.nrg_steps + 1, **out,
                     "guided_steps_per_run": len(guide.trace) // 2})  # two runs: warm-up + timed
        print("  ", json.dumps(rows[-1]), flush=True)
    ratio = rows[1]["s_per_step"] / rows[0]["s_per_step"]
    reward = guide = None
    train_rows = bench_latent_reward_training(args, gen, sh, z_shape, text_dim, device, dtype)
    return {"latent_reward_blocks": sh["k_blocks"], "latent": list(z_shape), "cfg_scale": 5.0, "rows": rows,
            "guided_over_unguided": round(ratio, 3), "train": train_rows}


def bench_latent_reward_training(args, gen, sh, z_shape, text_dim, device, dtype) -> list[dict]:
    """train-latent-reward's step (`raypipe.nrg.train_job.pair_loss`, BTT on noisy latent pairs) in a ZeRO-2
    engine: seconds per step and peak memory per batch, gradient checkpointing on/off."""
    import torch

    from raypipe.nrg.model import LatentReward
    from raypipe.nrg.train_job import LatentRewardSettings, pair_loss

    model = LatentReward.from_generator(gen.transformer, ("VQ", "MQ", "TA"), k_blocks=sh["k_blocks"])
    settings = LatentRewardSettings(zero_stage=2, lr=1e-5, batch=8, loss="btt", noise="uniform")
    engine = engine_for(model, settings, bf16=dtype == "bfloat16", micro_batch=8)
    generator = torch.Generator().manual_seed(0)

    def run_one(s: dict) -> dict:
        model.gradient_checkpointing = s["gradient_checkpointing"]
        engine.train()
        n = s["pairs"]
        z_a, z_b = torch.randn((n, *z_shape)), torch.randn((n, *z_shape))
        text = torch.randn((n, sh["text_len"], text_dim)) * 0.1
        y = torch.randint(-1, 2, (n, 3)).float()
        mask = torch.ones_like(y, dtype=torch.bool)

        def step():
            loss, _ = pair_loss(engine, settings, z_a, z_b, text, y, mask, generator)
            engine.backward(loss)
            engine.step()

        out = timed(step, device, args.steps, args.warmup)
        out["pairs_per_s"] = round(n / out["s_per_step"], 3)
        return out

    settings_list = [{"group": gc_on, "model": "latent_reward", "gradient_checkpointing": gc_on, "pairs": b}
                     for gc_on in (True, False) for b in (2, 8)]
    rows = sweep(settings_list, run_one, device)
    engine = model = None
    _reset_peak(device)
    return rows


# --- driver ------------------------------------------------------------------------------------------------------
def run(args) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    size = args.size or ("real" if cuda else "tiny")
    if size == "real" and not cuda:
        raise SystemExit("bench gpu --size real needs a CUDA GPU (bf16, ~40+ GB); use --size tiny on a CPU")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dtype = "bfloat16" if cuda else "float32"
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"--parts: unknown {unknown} (choose from {', '.join(PARTS)})")
    init_single_rank("nccl" if cuda else "gloo")
    import deepspeed
    import torch.distributed as dist

    report = {"size": size, "dtype": dtype, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
              "backend": dist.get_backend(), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
              "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
              "steps": args.steps, "warmup": args.warmup}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for part in parts:
        print(f"bench gpu: {part} ({size}, {dtype}, {report['device']})", flush=True)
        t0 = time.perf_counter()
        if part == "reward":
            report["reward"] = bench_reward(args, size, device, dtype)
        elif part == "flow":
            report["flow"] = bench_flow(args, size, device, dtype)
        else:
            report["nrg"] = bench_nrg(args, size, device, dtype)
        report[part]["part_s"] = round(time.perf_counter() - t0, 1)
        out.write_text(json.dumps(report, indent=2))
    print_table(report)
    return report


def print_table(report: dict) -> None:
    print(f"\n{report['device']}  {report['dtype']}  backend={report['backend']}  torch {report['torch']}  "
          f"deepspeed {report['deepspeed']}", flush=True)
    for part in ("reward", "flow"):
        if part not in report:
            continue
        r = report[part]
        print(f"{part}: {r['model']}  params {r['params'] / 1e6:.0f}M  trainable {r['trainable_params'] / 1e6:.0f}M")
        for row in r["train"]:
            what = row.get("algo", "btt")
            head = f"  {what:<4} pairs={row['pairs']} ckpt={'on ' if row['gradient_checkpointing'] else 'off'}"
            if "s_per_step" in row:
                rate = row.get("pairs_per_s", row.get("videos_per_s"))
                unit = "pairs/s" if "pairs_per_s" in row else "videos/s"
                print(f"{head}  {row['s_per_step']:.3f} s/step  {rate} {unit}  peak {row['peak_gib']} GiB")
            else:
                print(f"{head}  {row['result']}")
        if part == "reward":
            sc = r["scoring"]
            print(f"  scoring batch {sc['batch']}: {sc['videos_per_s']} videos/s  peak {sc['peak_gib']} GiB")
    if "nrg" in report:
        n = report["nrg"]
        for row in n["rows"]:
            print(f"nrg {row['sampler']:<9} {row['s_per_denoising_step']:.3f} s/denoising step  "
                  f"peak {row['peak_gib']} GiB")
        print(f"nrg guided/unguided step time: {n['guided_over_unguided']}")
        for row in n.get("train", []):
            head = f"latent reward train pairs={row['pairs']} ckpt={'on ' if row['gradient_checkpointing'] else 'off'}"
            print(f"{head}  {row['s_per_step']:.3f} s/step  {row['pairs_per_s']} pairs/s  peak {row['peak_gib']} GiB"
                  if "s_per_step" in row else f"{head}  {row['result']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raypipe.bench.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
