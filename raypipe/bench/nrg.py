"""`raypipe bench nrg`: the paper's Table 5 in miniature, the clean-latent ablation, and the cost of guidance.

    raypipe bench nrg --generator gen-out/flow/final --latent-reward lr-out/final \\
        --clean-latent-reward lr-clean/final --reward reward-out/final --out bench-out/nrg

For each weight vector (default 0:0:1, .1:.1:.8, .5:.5:0 over VQ:MQ:TA): guided vs unguided samples from the SAME
initial noise, win rates per dimension by the pixel-space VideoReward AND by the SynthPref oracle side by side
(a reward win the oracle does not confirm is reported as reward hacking). Ablation: the same guidance from a latent
reward trained on clean latents only (t = 0). Cost: sampling time guided / unguided, and pixel-space guidance
(VAE decode + VideoReward + backprop through both) on a few prompts, in the same run.
Writes OUT/nrg.json and OUT/nrg.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def _weights(spec: str, dims) -> dict[str, float]:
    from raypipe.data.weights import weight_vector

    return weight_vector(spec, dims)


def run_nrg_bench(args) -> dict:
    import torch

    from raypipe.data.prompts import read_prompts
    from raypipe.flow.evaluation import write_grid_gif
    from raypipe.nrg.model import LatentReward
    from raypipe.nrg.sampling import load_generator

    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen = load_generator(args.generator)
    noisy = LatentReward.from_pretrained(args.latent_reward)
    clean = LatentReward.from_pretrained(args.clean_latent_reward) if args.clean_latent_reward else None
    prompts = read_prompts(str(args.prompts), args.seed)
    shape = gen.latent_shape(args.frames, args.height, args.width, check=True)
    common = dict(seed=args.seed, steps=args.steps, cfg_scale=args.cfg_scale, shape=shape)
    report: dict = {
        "prompts": len(prompts),
        "seed": args.seed,
        "strength": args.strength,
        "steps": args.steps,
        "cfg_scale": args.cfg_scale,
        "latent_reward": args.latent_reward,
        "k_blocks": noisy.k_blocks,
        "runs": {},
    }
    runs = [(f"noisy {w}", noisy, w) for w in args.weights]
    if clean is not None:
        runs += [(f"clean {w}", clean, w) for w in args.weights[:1]]
    samples = _sample_runs(args, gen, prompts, runs, noisy.dims, common, report)
    dims = _judge(args, samples, prompts, runs, out, report)
    n = min(8, len(prompts))
    write_grid_gif(samples["unguided"][:n], samples[runs[0][0]][:n], out / "grid.gif")
    report["cost"] = _cost(args, gen, noisy, prompts, common)
    (out / "nrg.json").write_text(json.dumps(report, indent=2))
    (out / "nrg.md").write_text(_markdown(report, dims))
    print(_markdown(report, dims), flush=True)
    return report


def _sample_runs(args, gen, prompts, runs, dims, common: dict, report: dict) -> dict:
    """Unguided samples, then guided ones for every (name, latent reward, weights) run from the same noise; each
    run's weights, sampling time and mean latent reward go to report["runs"]. Returns name -> videos."""
    from raypipe.nrg.sampling import guided_samples

    print(f"unguided samples ({len(prompts)} prompts)", flush=True)
    samples = {"unguided": guided_samples(gen, None, prompts, {}, 0.0, **common)["videos"]}
    for name, model, spec in runs:
        weights = _weights(spec, dims)
        print(f"guided: {name} (λ = {args.strength})", flush=True)
        result = guided_samples(gen, model, prompts, weights, args.strength, **common)
        samples[name] = result["videos"]
        report["runs"][name] = {
            "weights": weights,
            "sample_s": round(result["sample_s"], 2),
            "mean_latent_reward": {d: float(v) for d, v in zip(model.dims, result["latent_rewards"].mean(0))},
        }
    return samples


def _judge(args, samples: dict, prompts, runs, out: Path, report: dict) -> list[str]:
    """Win rates of every guided run over the unguided samples, by the pixel VideoReward and by the oracle."""
    from raypipe.flow.evaluation import compare, score_samples

    print("scoring every set with the pixel VideoReward and the oracle", flush=True)
    scores, oracle, dims = score_samples(samples, prompts, args.reward, out, fps=8.0)
    for name, _, _ in runs:
        report["runs"][name].update(compare(scores, oracle, dims, prompts, name, "unguided", args.hacking_margin))
    report["oracle_unguided_attributes"] = report["runs"][runs[0][0]]["oracle_unguided_attributes"]
    return dims


def _cost(args, gen, noisy, prompts, common: dict) -> dict:
    """Sampling time on the first --cost-prompts prompts: unguided, latent guidance, pixel-space guidance."""
    from raypipe.nrg.pixel import PixelReward
    from raypipe.nrg.sampling import guided_samples
    from raypipe.reward.model import VideoReward
    from raypipe.reward.scoring import resolve_sampling

    k = min(args.cost_prompts, len(prompts))
    reward = VideoReward.from_pretrained(args.reward)
    sampling, _ = resolve_sampling(args.reward, None)
    frames = min(8, sampling.max_frames)  # what the reward model sees of a generated clip (approximately)
    size = max(56, int(sampling.min_pixels**0.5) // 28 * 28)
    weights = _weights(args.weights[0], noisy.dims)
    cost = {}
    for label, model in (("unguided", None), ("latent", noisy)):
        t0 = time.perf_counter()
        guided_samples(gen, model, prompts[:k], weights, args.strength, **common, decode=False)
        cost[label] = time.perf_counter() - t0
    text_prompts = prompts[:k]
    pixel = PixelReward(gen, reward, text_prompts, frames=frames, size=size)
    t0 = time.perf_counter()
    guided_samples(
        gen, pixel, text_prompts, _weights(args.weights[0], pixel.dims), args.strength, **common, decode=False, batch=k
    )
    cost["pixel"] = time.perf_counter() - t0
    return {
        "prompts": k,
        "seconds": {key: round(v, 2) for key, v in cost.items()},
        "latent_over_unguided": round(cost["latent"] / cost["unguided"], 3),
        "pixel_over_unguided": round(cost["pixel"] / cost["unguided"], 3),
        "pixel_reward_input": {"frames": frames, "size": size},
        "target_latent_over_unguided": 1.5,
    }


def _markdown(report: dict, dims: list[str]) -> str:
    lines = [
        f"# Flow-NRG in miniature ({report['prompts']} prompts, seed {report['seed']}, λ = {report['strength']}, "
        f"K = {report['k_blocks']})",
        "",
        "| run | " + " | ".join(f"{d} reward / oracle" for d in dims if d in ("VQ", "MQ", "TA")) + " | hacking |",
        "|---" * (2 + len([d for d in dims if d in ("VQ", "MQ", "TA")])) + "|",
    ]
    for name, run in report["runs"].items():
        cells = [
            f"{run['reward_win_rate'][d]:.2f} / {run['oracle_win_rate'][d]:.2f}"
            for d in dims
            if d in ("VQ", "MQ", "TA")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'; '.join(run['reward_hacking']) or '-'} |")
    c = report.get("cost")
    if c:
        lines += [
            "",
            f"Cost on {c['prompts']} prompts: unguided {c['seconds']['unguided']} s, latent guidance "
            f"{c['seconds']['latent']} s ({c['latent_over_unguided']}×, target ≤ 1.5), pixel-space guidance "
            f"{c['seconds']['pixel']} s ({c['pixel_over_unguided']}×).",
        ]
    return "\n".join(lines) + "\n"
