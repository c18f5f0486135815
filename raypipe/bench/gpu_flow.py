"""`raypipe bench gpu`, part "flow": Flow-DPO / SFT / Flow-RWR steps (`raypipe.flow.training.algo_loss`, the
function train-flow runs) on a Wan2.1-T2V-1.3B-shaped transformer with LoRA r=64, in a one-rank ZeRO-2 engine."""

from __future__ import annotations

import time

from raypipe.bench.gpu_harness import engine_for, param_counts, random_family, reset_peak, shapes, sweep, timed


def bench_flow(args, size: str, device, dtype: str) -> dict:
    from raypipe.flow.lora import add_lora
    from raypipe.recipes.train_flow import FlowTrainSettings

    sh = shapes(size)
    t0 = time.perf_counter()
    gen = random_family(size, device, dtype)
    build_s = time.perf_counter() - t0
    add_lora(gen.transformer, 64, 128, 0.0, gen.lora_targets)
    n_total, n_train = param_counts(gen.transformer)
    settings = FlowTrainSettings(algo="dpo", zero_stage=2, lr=5e-6, batch=4, beta=500.0)
    engine = engine_for(gen.transformer, settings, bf16=dtype == "bfloat16", micro_batch=4)
    z_shape = gen.latent_shape(*sh["clip"], check=True)
    rows = _train_sweep(args, gen, engine, sh["text_len"], z_shape, device)
    engine = gen = None
    reset_peak(device)
    return {
        "model": "Wan2.1-T2V-1.3B transformer shapes + LoRA r=64" if size == "real" else "tiny Wan",
        "params": n_total,
        "trainable_params": n_train,
        "build_s": round(build_s, 1),
        "clip": dict(zip(("frames", "height", "width"), sh["clip"])),
        "latent": list(z_shape),
        "tokens_per_video": int(z_shape[1] * (z_shape[2] // 2) * (z_shape[3] // 2)),
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


def _tensors(algo: str, n: int, text_len: int, text_dim: int, z_shape) -> dict:
    """A training batch of `n` pairs: DPO's winner/loser latents, or 2n rewarded videos for SFT/RWR."""
    import torch

    text = torch.randn((n, text_len, text_dim)) * 0.1
    if algo == "dpo":
        return {"z_w": torch.randn((n, *z_shape)), "z_l": torch.randn((n, *z_shape)), "text": text}
    # the same number of videos through the policy as DPO's 2n, without the reference pass
    return {"z": torch.randn((2 * n, *z_shape)), "text": torch.cat([text, text]), "reward": torch.randn(2 * n)}


def _train_sweep(args, gen, engine, text_len: int, z_shape, device) -> list[dict]:
    import torch

    from raypipe.flow.training import algo_loss
    from raypipe.recipes.train_flow import FlowTrainSettings

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
        tensors = _tensors(s["algo"], n, text_len, text_dim, z_shape)

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
