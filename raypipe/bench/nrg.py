"""`raypipe bench nrg`: the paper's Table 5 in miniature with a λ sweep, the clean-latent ablation, the cost of
guidance; over seeds, with 95% intervals and a verdict per claim.

    raypipe bench nrg --generator gen-out/flow/final --latent-reward lr-out/final \\
        --clean-latent-reward lr-clean/final --reward reward-out/final --out bench-out/nrg \\
        --strength 0.5,1,2,4 --seeds 0,1,2 --prompts 128

For each weight vector (default 0:0:1, .1:.1:.8, .5:.5:0 over VQ:MQ:TA) and each strength λ: guided vs unguided
samples from the SAME initial noise, win rates per dimension by the pixel-space VideoReward AND by the SynthPref
oracle side by side (a reward win the oracle does not confirm is reported as reward hacking). Ablation: the first
weights' guidance from a latent reward trained on clean latents only (t = 0). λ = 0 is the unguided sampler itself
(every prompt a tie), so it is the table's null row rather than a run. Each seed draws its own prompts and noise;
win rates pool the seeds' prompts in the two-level bootstrap of `raypipe.bench.stats`. Claims: guidance by a weight
vector raises the win rate of its heaviest dimension (> 0.5); the noise-aware latent reward guides that dimension
better than the clean one (paired per prompt). Cost (first seed): sampling time guided / unguided, and pixel-space
guidance (VAE decode + VideoReward + backprop through both) on a few prompts.
Writes OUT/nrg.json and OUT/nrg.md; each seed's own report in OUT/s<seed>/nrg.json (read back on a rerun).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from raypipe.bench.cells import cell, parse_seeds
from raypipe.bench.stats import bootstrap_ci, fmt, paired_differences, verdict, win_rate_ci

JUDGED = ("VQ", "MQ", "TA")


def _weights(spec: str, dims) -> dict[str, float]:
    from raypipe.data.weights import weight_vector

    return weight_vector(spec, dims)


def run_nrg_bench(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = parse_seeds(args.seeds)
    strengths = strengths_of(args.strength)
    per_seed = {}
    for seed in seeds:
        print(f"== seed {seed}", flush=True)
        seed_out = out / f"s{seed}"
        job = dict(seed=seed, strengths=strengths, out=seed_out, with_cost=seed == seeds[0])
        per_seed[seed] = cell(seed_out / "nrg.json", lambda job=job: _one_seed(args, **job))
    first = per_seed[seeds[0]]
    report = {
        "seeds": seeds,
        "prompts_per_seed": first["prompts"],
        "strengths": strengths,
        "steps": args.steps,
        "cfg_scale": args.cfg_scale,
        "latent_reward": args.latent_reward,
        "k_blocks": first["k_blocks"],
        "dims": first["dims"],
        **nrg_intervals(per_seed),
        "cost": first.get("cost"),
    }
    (out / "nrg.json").write_text(json.dumps(report, indent=2))
    (out / "nrg.md").write_text(_markdown(report))
    print(_markdown(report), flush=True)
    return report


def strengths_of(spec) -> list[float]:
    """--strength: one λ or a comma list; λ = 0 (the unguided sampler) is implied, not run."""
    values = [float(v) for v in str(spec).split(",") if v.strip()]
    kept = [v for v in values if v != 0.0]
    if not kept or any(v < 0 for v in kept):
        raise ValueError(f"--strength takes positive λ values (λ = 0 is the unguided baseline), got {spec!r}")
    return kept


def _one_seed(args, seed: int, strengths: list[float], out: Path, with_cost: bool) -> dict:
    """One seed's prompts and noise: the unguided samples, every guided run, their judgement (and the cost)."""
    import torch

    from raypipe.data.prompts import read_prompts
    from raypipe.flow.evaluation import write_grid_gif
    from raypipe.nrg.model import LatentReward
    from raypipe.nrg.sampling import load_generator

    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    gen = load_generator(args.generator)
    noisy = LatentReward.from_pretrained(args.latent_reward, generator=gen)
    clean = LatentReward.from_pretrained(args.clean_latent_reward, generator=gen) if args.clean_latent_reward else None
    prompts = read_prompts(str(args.prompts), seed)
    shape = gen.latent_shape(args.frames, args.height, args.width, check=True)
    common = dict(seed=seed, steps=args.steps, cfg_scale=args.cfg_scale, shape=shape)
    report: dict = {"prompts": len(prompts), "seed": seed, "k_blocks": noisy.k_blocks, "runs": {}}
    runs = [(run_name("noisy", w, lam), noisy, w, lam) for lam in strengths for w in args.weights]
    if clean is not None:
        runs += [(run_name("clean", args.weights[0], lam), clean, args.weights[0], lam) for lam in strengths]
    samples = _sample_runs(gen, prompts, runs, noisy.dims, common, report)
    report["dims"] = _judge(args, samples, prompts, runs, out, report)
    n = min(8, len(prompts))
    write_grid_gif(samples["unguided"][:n], samples[runs[0][0]][:n], out / "grid.gif")
    if with_cost:
        report["cost"] = _cost(args, gen, noisy, prompts, common, strengths[0])
    (out / "nrg.json").write_text(json.dumps(report, indent=2))
    return report


def run_name(kind: str, weights: str, strength: float) -> str:
    return f"{kind} {weights} λ={strength:g}"


def heaviest(weights: dict) -> list[str]:
    """The judged dimensions that carry the largest weight: every one of them when the top weight is shared
    ({VQ: .5, MQ: .5} makes a claim about VQ and one about MQ), none when no judged dimension is weighted."""
    judged = {d: float(w) for d, w in weights.items() if d in JUDGED}
    if not judged:
        return []
    top = max(judged.values())
    return [d for d in JUDGED if d in judged and math.isclose(judged[d], top, rel_tol=1e-9, abs_tol=1e-12)]


def nrg_intervals(per_seed: dict) -> dict:
    """Every run's win rates pooled over seeds x prompts; the claims of Table 5 and of the clean-latent ablation."""
    names = list(next(iter(per_seed.values()))["runs"])
    runs, claims = {}, []
    for name in names:
        seed_runs = {s: r["runs"][name] for s, r in per_seed.items()}
        first = next(iter(seed_runs.values()))
        win = {
            judge: {d: win_rate_ci([r["outcomes"][judge].get(d, []) for r in seed_runs.values()]) for d in JUDGED}
            for judge in ("reward", "oracle")
        }
        runs[name] = {
            "weights": first["weights"],
            "strength": first["strength"],
            "win_rate": win,
            "hacking_seeds": sum(bool(r["reward_hacking"]) for r in seed_runs.values()),
        }
        for top in heaviest(first["weights"]):
            if name.startswith("noisy"):
                for judge in ("reward", "oracle"):
                    text = f"{name} raises {top} (its heaviest weight) by the {judge}"
                    claims.append({"claim": text, "verdict": verdict(win[judge][top]), "win rate": win[judge][top]})
            noisy_name = "noisy" + name[len("clean") :]
            if name.startswith("clean") and noisy_name in names:
                noisy_runs = {s: r["runs"][noisy_name] for s, r in per_seed.items()}
                ci = bootstrap_ci(paired_differences(noisy_runs, seed_runs, "oracle", top))
                text = f"noise-aware guides {top} better than clean ({name[len('clean ') :]}, oracle)"
                claims.append({"claim": text, "verdict": verdict(ci, 0.0), "difference": ci})
    return {"runs": runs, "claims": claims}


def _sample_runs(gen, prompts, runs, dims, common: dict, report: dict) -> dict:
    """Unguided samples, then guided ones for every (name, latent reward, weights, λ) run from the same noise; each
    run's weights, λ, sampling time and mean latent reward go to report["runs"]. Returns name -> videos."""
    from raypipe.nrg.sampling import guided_samples

    print(f"unguided samples ({len(prompts)} prompts)", flush=True)
    samples = {"unguided": guided_samples(gen, None, prompts, {}, 0.0, **common)["videos"]}
    for name, model, spec, strength in runs:
        weights = _weights(spec, dims)
        print(f"guided: {name}", flush=True)
        result = guided_samples(gen, model, prompts, weights, strength, **common)
        samples[name] = result["videos"]
        report["runs"][name] = {
            "weights": weights,
            "strength": strength,
            "sample_s": round(result["sample_s"], 2),
            "mean_latent_reward": {d: float(v) for d, v in zip(model.dims, result["latent_rewards"].mean(0))},
        }
    return samples


def _judge(args, samples: dict, prompts, runs, out: Path, report: dict) -> list[str]:
    """Win rates of every guided run over the unguided samples, by the pixel VideoReward and by the oracle."""
    from raypipe.flow.evaluation import compare, score_samples

    print("scoring every set with the pixel VideoReward and the oracle", flush=True)
    scores, oracle, dims = score_samples(samples, prompts, args.reward, out, fps=8.0)
    for name, *_ in runs:
        report["runs"][name].update(compare(scores, oracle, dims, prompts, name, "unguided", args.hacking_margin))
    report["oracle_unguided_attributes"] = report["runs"][runs[0][0]]["oracle_unguided_attributes"]
    return dims


def _cost(args, gen, noisy, prompts, common: dict, strength: float) -> dict:
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
        guided_samples(gen, model, prompts[:k], weights, strength, **common, decode=False)
        cost[label] = time.perf_counter() - t0
    text_prompts = prompts[:k]
    pixel = PixelReward(gen, reward, text_prompts, frames=frames, size=size)
    t0 = time.perf_counter()
    guided_samples(
        gen, pixel, text_prompts, _weights(args.weights[0], pixel.dims), strength, **common, decode=False, batch=k
    )
    cost["pixel"] = time.perf_counter() - t0
    return {
        "prompts": k,
        "strength": strength,
        "seconds": {key: round(v, 2) for key, v in cost.items()},
        "latent_over_unguided": round(cost["latent"] / cost["unguided"], 3),
        "pixel_over_unguided": round(cost["pixel"] / cost["unguided"], 3),
        "pixel_reward_input": {"frames": frames, "size": size},
        "target_latent_over_unguided": 1.5,
    }


def _markdown(report: dict) -> str:
    dims = [d for d in report["dims"] if d in JUDGED]
    lines = [
        f"# Flow-NRG in miniature ({len(report['seeds'])} seeds {report['seeds']} x {report['prompts_per_seed']} "
        f"prompts, λ ∈ {report['strengths']}, K = {report['k_blocks']})",
        "",
        "Guided vs unguided win rate, mean [95% interval]; reward model / oracle. λ = 0 is the unguided sampler "
        "(0.50 everywhere by construction).",
        "",
        "| run | " + " | ".join(f"{d} reward / oracle" for d in dims) + " | reward hacking (seeds) |",
        "|---" * (2 + len(dims)) + "|",
    ]
    for name, run in report["runs"].items():
        cells = [f"{fmt(run['win_rate']['reward'][d])} / {fmt(run['win_rate']['oracle'][d])}" for d in dims]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {run['hacking_seeds']} of {len(report['seeds'])} |")
    if report.get("claims"):
        lines += ["", "| claim | verdict here | interval |", "|---|---|---|"]
        for c in report["claims"]:
            lines.append(f"| {c['claim']} | {c['verdict']} | {fmt(c.get('win rate') or c.get('difference'))} |")
        some = next(iter(report["runs"].values()))["win_rate"]["oracle"][dims[0]]
        lines += ["", f"Intervals: {some['method']}."]
    c = report.get("cost")
    if c:
        lines += [
            "",
            f"Cost on {c['prompts']} prompts (λ = {c['strength']:g}): unguided {c['seconds']['unguided']} s, latent "
            f"guidance {c['seconds']['latent']} s ({c['latent_over_unguided']}×, target ≤ 1.5), pixel-space guidance "
            f"{c['seconds']['pixel']} s ({c['pixel_over_unguided']}×).",
        ]
    return "\n".join(lines) + "\n"
