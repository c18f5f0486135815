"""`raypipe bench gpu`, part "nrg": the Flow-NRG sampler (`raypipe.flow.sampler.sample` +
`raypipe.nrg.guidance.RewardGuidance`) with a latent reward on the generator's first K blocks, unguided vs guided,
then that latent reward's training step (`raypipe.nrg.training.pair_loss`) in a one-rank ZeRO-2 engine."""

from __future__ import annotations

import json

from raypipe.bench.gpu_harness import engine_for, random_family, reset_peak, shapes, sweep, timed

DIMS = ("VQ", "MQ", "TA")
CFG_SCALE = 5.0


def bench_nrg(args, size: str, device, dtype: str) -> dict:
    import torch

    from raypipe.nrg.guidance import RewardGuidance
    from raypipe.nrg.model import LatentReward

    sh = shapes(size)
    gen = random_family(size, device, dtype)
    gen.transformer.eval().requires_grad_(False)
    reward = LatentReward.from_generator(gen.transformer, DIMS, k_blocks=sh["k_blocks"])
    reward = reward.to(device).eval().requires_grad_(False)
    z_shape = gen.latent_shape(*sh["clip"], check=True)
    text_dim = int(gen.transformer.config.text_dim)
    text = (torch.randn((1, sh["text_len"], text_dim)) * 0.1).to(device)
    uncond = torch.zeros_like(text)
    noise = torch.randn((1, *z_shape), generator=torch.Generator().manual_seed(0))
    rows = []
    for name, weights, strength in (("unguided", {}, 0.0), ("guided", {"VQ": 0.1, "MQ": 0.1, "TA": 0.8}, 1.0)):
        guide = RewardGuidance(reward, text, weights, strength)
        rows.append(_sampler_row(args, name, gen, text, uncond, noise, guide, device))
    ratio = rows[1]["s_per_step"] / rows[0]["s_per_step"]
    reward = guide = None
    train_rows = bench_latent_reward_training(args, gen, sh, z_shape, text_dim, device, dtype)
    return {
        "latent_reward_blocks": sh["k_blocks"],
        "latent": list(z_shape),
        "cfg_scale": CFG_SCALE,
        "rows": rows,
        "guided_over_unguided": round(ratio, 3),
        "train": train_rows,
    }


def _sampler_row(args, name: str, gen, text, uncond, noise, guide, device) -> dict:
    """One warm-up and one timed sampling run with `guide`: seconds per denoising step (with CFG)."""
    from raypipe.flow.sampler import sample

    steps = args.nrg_steps + 1  # grid points: the first step (t = 1) is never guided, so time steps + 1

    def run():
        sample(
            gen.velocity,
            text,
            uncond,
            noise.shape,
            steps=steps,
            cfg_scale=CFG_SCALE,
            shift=gen.shift,
            noise=noise,
            guidance=guide,
        )

    out = timed(run, device, 1, 1)
    out["s_per_denoising_step"] = round(out["s_per_step"] / steps, 4)
    row = {
        "sampler": name,
        "denoising_steps": steps,
        **out,
        "guided_steps_per_run": len(guide.trace) // 2,
    }  # two runs: warm-up + timed
    print("  ", json.dumps(row), flush=True)
    return row


def bench_latent_reward_training(args, gen, sh, z_shape, text_dim, device, dtype) -> list[dict]:
    """train-latent-reward's step (`raypipe.nrg.training.pair_loss`, BTT on noisy latent pairs) in a ZeRO-2
    engine: seconds per step and peak memory per batch, gradient checkpointing on/off."""
    import torch

    from raypipe.nrg.model import LatentReward
    from raypipe.nrg.training import pair_loss
    from raypipe.recipes.train_latent_reward import LatentRewardSettings

    model = LatentReward.from_generator(gen.transformer, DIMS, k_blocks=sh["k_blocks"])
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

    settings_list = [
        {"group": gc_on, "model": "latent_reward", "gradient_checkpointing": gc_on, "pairs": b}
        for gc_on in (True, False)
        for b in (2, 8)
    ]
    rows = sweep(settings_list, run_one, device)
    engine = model = None
    reset_peak(device)
    return rows
