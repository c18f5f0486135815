"""`raypipe bench gpu`, part "flow": Flow-DPO / SFT / Flow-RWR steps (`raypipe.flow.training.algo_loss`, the
function train-flow runs) on the --family generator's transformer (default Wan2.1-T2V-1.3B-shaped; Wan2.2 A14B:
both experts, LoRA on both, each step's t on either side of the boundary) with LoRA r=64, in a one-rank ZeRO-2
engine."""

from __future__ import annotations

import time

from raypipe.bench.gpu_harness import (
    FAMILIES,
    engine_for,
    family_clip,
    param_counts,
    random_family,
    reset_peak,
    sweep,
    timed,
)


def bench_flow(args, size: str, device, dtype: str) -> dict:
    from raypipe.flow.lora import add_lora
    from raypipe.recipes.train_flow import FlowTrainSettings

    t0 = time.perf_counter()
    family = getattr(args, "family", "wan21-1.3b")
    gen = random_family(size, device, dtype, family)
    build_s = time.perf_counter() - t0
    add_lora(gen.transformer, 64, 128, 0.0, gen.lora_targets)
    n_total, n_train = param_counts(gen.transformer)
    settings = FlowTrainSettings(algo="dpo", zero_stage=2, lr=5e-6, batch=4, beta=500.0)
    engine = engine_for(gen.transformer, settings, bf16=dtype == "bfloat16", micro_batch=4)
    clip = family_clip(size, family)
    z_shape = gen.latent_shape(*clip, check=True)
    rows = _train_sweep(args, gen, engine, z_shape, clip, device)
    tokens = tokens_per_video(gen, z_shape)
    engine = gen = None
    reset_peak(device)
    return {
        "family": family,
        "model": f"{FAMILIES[family][4]} transformer shapes + LoRA r=64" if size == "real" else f"tiny {family}",
        "params": n_total,
        "trainable_params": n_train,
        "build_s": round(build_s, 1),
        "clip": dict(zip(("frames", "height", "width"), clip)),
        "latent": list(z_shape),
        "tokens_per_video": tokens,
        "zero_stage": 2,
        "train": rows,
    }


def _settings(batches: list[int]) -> list[dict]:
    """DPO over the batches with gradient checkpointing, SFT and RWR at the largest, then DPO without it."""
    rows = [{"group": ("dpo", True), "algo": "dpo", "gradient_checkpointing": True, "pairs": b} for b in batches]
    rows += [
        {"group": (algo, True), "algo": algo, "gradient_checkpointing": True, "pairs": batches[-1]}
        for algo in ("sft", "rwr")
    ]
    rows += [{"group": ("dpo", False), "algo": "dpo", "gradient_checkpointing": False, "pairs": b} for b in batches]
    return rows


def _tensors(algo: str, n: int, text, z_shape) -> dict:
    """A training batch of `n` pairs: DPO's winner/loser latents, or 2n rewarded videos for SFT/RWR."""
    import torch

    text = text.expand(n, *text.shape[1:]).clone()
    if algo == "dpo":
        return {"z_w": torch.randn((n, *z_shape)), "z_l": torch.randn((n, *z_shape)), "text": text}
    # the same number of videos through the policy as DPO's 2n, without the reference pass
    return {"z": torch.randn((2 * n, *z_shape)), "text": torch.cat([text, text]), "reward": torch.randn(2 * n)}


def _train_sweep(args, gen, engine, z_shape, clip, device) -> list[dict]:
    import numpy as np
    import torch

    from raypipe.flow.conditioning import encode_with_images
    from raypipe.flow.training import algo_loss
    from raypipe.recipes.train_flow import FlowTrainSettings

    # the family's own text input (packed or not); image-to-video families (Wan I2V) get a grey first frame
    image = np.full((1, clip[1], clip[2], 3), 128, np.uint8) if getattr(gen, "image_mode", None) == "concat" else None
    prompt = encode_with_images(gen, ["a red circle moving left"], image, clip[0]).cpu()
    generator = torch.Generator().manual_seed(0)

    def run_one(s: dict) -> dict:
        if s["gradient_checkpointing"]:
            gen.transformer.enable_gradient_checkpointing()
        else:
            gen.transformer.disable_gradient_checkpointing()
        engine.train()
        n = s["pairs"]
        t_cfg = FlowTrainSettings(algo=s["algo"], beta=500.0, tau=1.0)
        tensors = _tensors(s["algo"], n, prompt, z_shape)

        def step():
            loss, _ = algo_loss(gen, engine, t_cfg, tensors, generator)
            engine.backward(loss)
            engine.step()

        out = timed(step, device, args.steps, args.warmup)
        out["videos_per_s"] = round(2 * n / out["s_per_step"], 3)
        return out

    rows = sweep(_settings([int(b) for b in args.flow_batches.split(",")]), run_one, device)
    for r in rows:
        r["group"] = list(r["group"])
    return rows


def tokens_per_video(gen, z_shape) -> int:
    """The transformer's sequence length for latents (C, T', H', W'): its patch sizes (Wan (1, 2, 2), HunyuanVideo
    2 x 2, HunyuanVideo 1.5 and LTX 1 x 1); the video tokens only (not the text tokens they attend to)."""
    config = gen.transformer.config
    patch = config.patch_size
    pt, ph, pw = patch if isinstance(patch, (list, tuple)) else (config.get("patch_size_t", 1) or 1, patch, patch)
    return int((z_shape[1] // pt) * (z_shape[2] // ph) * (z_shape[3] // pw))
