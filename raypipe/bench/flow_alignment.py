"""`raypipe bench flow-alignment`: the paper's Table 3 in miniature, over seeds, with 95% intervals.

    raypipe bench flow-alignment --generator gen-out/flow/final --reward reward-out/final \\
        --pairs gen-pairs/pairs --weights '{VQ: 1}' --seeds 0,1,2 --prompts 128 --out bench-out/flow-alignment

From ONE pretrained tiny generator, ONE reward model and ONE pair set (e.g. `raypipe sample-pairs`, relabel-shaped):
SFT (winners), Flow-RWR (all samples, softmax(r/τ) weights), Flow-DPO with β_t = β(1−t)² and Flow-DPO with constant
β — the same LoRA, learning rate and steps — then `eval-flow` of each against the pretrained generator on the same
prompts and initial noise: per-dimension win rates by the reward model and by the oracle side by side. Each seed
repeats everything (training seed, eval prompts and noise). Win rates pool the seeds' prompts in the two-level
bootstrap of `raypipe.bench.stats`; the paper's claim "constant-β Flow-DPO beats each other variant on the targeted
dimensions" is tested on paired per-prompt differences (same prompts and noise), with a verdict per claim.
Writes OUT/flow_alignment.json and OUT/flow_alignment.md (each run in OUT/<variant>_s<seed>; finished runs are
read back when the same command is rerun).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from raypipe.bench.cells import cell, parse_seeds
from raypipe.bench.stats import bootstrap_ci, fmt, paired_differences, verdict, win_rate_ci

VARIANTS = {
    "sft": ["train.algo=sft"],
    "rwr": ["train.algo=rwr"],
    "dpo_beta_t": ["train.algo=dpo", "train.beta_schedule=derived"],
    "dpo": ["train.algo=dpo", "train.beta_schedule=constant"],
    # the paper's suggested remedy for what DPO costs the untargeted dimensions: an SFT term on high-quality videos
    # (clean SynthPref renders) in every update; not in the default set (Table 3 has four rows)
    "dpo_sft": ["train.algo=dpo", "train.beta_schedule=constant", "train.lambda_sft=1.0", "data.real_synth=64"],
}
DEFAULT_VARIANTS = ("sft", "rwr", "dpo_beta_t", "dpo")


_TRAIN_SUMMARY_KEYS = ("steps", "rows", "row_counts", "last", "wall_s")
_EVAL_RESULT_KEYS = (
    "outcomes",
    "reward_win_rate",
    "oracle_win_rate",
    "reward_hacking",
    "oracle_aligned_attributes",
    "oracle_base_attributes",
)


def run_flow_alignment_bench(args) -> dict:
    from raypipe.config import load_config
    from raypipe.data.weights import weight_vector
    from raypipe.recipes.eval_flow import run as run_eval_flow
    from raypipe.recipes.train_flow import FlowTrainConfig
    from raypipe.recipes.train_flow import run as run_train_flow

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    weights = weight_vector(args.weights, ("VQ", "MQ", "TA"))
    weights = {d: w for d, w in weights.items() if w}
    variants = args.variants.split(",") if args.variants else list(DEFAULT_VARIANTS)
    for name in variants:
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; choose from {list(VARIANTS)}")
    seeds = parse_seeds(args.seeds)
    report = _empty_report(args, weights, seeds)
    for seed in seeds:
        for name in variants:
            run_dir = out / f"{name}_s{seed}"
            t0 = time.perf_counter()
            print(f"== {name}, seed {seed}: train-flow, then eval-flow", flush=True)
            cfg = load_config(FlowTrainConfig, args.config, _train_overrides(args, weights, run_dir, name, seed))
            train = cell(run_dir / "summary.json", lambda cfg=cfg: run_train_flow(cfg))
            ecfg = _eval_config(args, run_dir, seed)
            ev = cell(run_dir / "eval" / "report.json", lambda ecfg=ecfg: run_eval_flow(ecfg))
            report["runs"].setdefault(name, {})[seed] = _variant_summary(train, ev, t0)
            (out / "flow_alignment.json").write_text(json.dumps(report, indent=2, default=str))
    report.update(alignment_intervals(report["runs"], list(weights)))
    (out / "flow_alignment.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "flow_alignment.md").write_text(_markdown(report))
    print(_markdown(report), flush=True)
    return report


def alignment_intervals(runs: dict, targeted: list[str], best: str = "dpo") -> dict:
    """Per variant, judge and dimension the pooled win rate over the base; per other variant, `best` minus it on
    the targeted dimensions (paired per prompt within each seed); the claims with their verdicts."""
    dims = ("VQ", "MQ", "TA")
    win = {
        name: {
            judge: {d: win_rate_ci([r["outcomes"][judge].get(d, []) for r in per.values()]) for d in dims}
            for judge in ("reward", "oracle")
        }
        for name, per in runs.items()
    }
    claims = []
    for judge in ("reward", "oracle"):
        for d in targeted:
            if best in win:
                ci = win[best][judge][d]
                claims.append(_claim(f"{best} beats the base on {d} by the {judge}", ci, 0.5, "win rate"))
            for other in runs:
                if other in (best, "dpo_sft") or best not in runs:
                    continue
                ci = bootstrap_ci(paired_differences(runs[best], runs[other], judge, d))
                claims.append(_claim(f"{best} beats {other} on {d} by the {judge}", ci, 0.0, "difference"))
    if "dpo_sft" in runs and best in runs:  # the remedy keeps what DPO alone loses on the other dimensions
        for judge in ("reward", "oracle"):
            for d in (d for d in dims if d not in targeted):
                ci = bootstrap_ci(paired_differences(runs["dpo_sft"], runs[best], judge, d))
                claims.append(_claim(f"dpo_sft keeps {d} better than {best} by the {judge}", ci, 0.0, "difference"))
    return {"win_rate": win, "claims": claims}


def _claim(text: str, ci: dict, null: float, what: str) -> dict:
    return {"claim": text, "verdict": verdict(ci, null), what: ci}


def _empty_report(args, weights: dict, seeds: list[int]) -> dict:
    """The report's shared inputs, with no run yet."""
    return {
        "generator": args.generator,
        "reward": args.reward,
        "pairs": args.pairs,
        "weights": weights,
        "steps": args.steps,
        "seeds": seeds,
        "prompts": args.prompts,
        "runs": {},
    }


def _train_overrides(args, weights: dict, run_dir: Path, name: str, seed: int) -> list[str]:
    """`train-flow` overrides for variant `name`: the shared setup, the variant's own, then the user's."""
    return [
        f"generator={args.generator}",
        f"data.manifest={args.pairs}",
        "data.source=margins",
        f"data.weights={json.dumps(weights)}",
        f"clip.frames={args.frames}",
        f"clip.height={args.height}",
        f"clip.width={args.width}",
        f"train.max_steps={args.steps}",
        "train.epochs=1000",
        f"train.seed={seed}",
        "data.latent_cache=latents",
        f"out={run_dir}",
        "progress=false",
        *VARIANTS[name],
        *(args.overrides or []),
    ]


def _eval_config(args, run_dir: Path, seed: int):
    """`eval-flow` config of one run's final LoRA against the pretrained generator."""
    from raypipe.config import ClipConfig
    from raypipe.recipes.eval_flow import FlowEvalConfig

    return FlowEvalConfig(
        generator=args.generator,
        lora=str(run_dir / "final"),
        reward=args.reward,
        prompts=str(args.prompts),
        out=str(run_dir / "eval"),
        clip=ClipConfig(args.frames, args.height, args.width),
        seed=seed,
    )


def _variant_summary(train: dict, ev: dict, t0: float) -> dict:
    """One variant's report entry: its training summary, its eval results and its wall time since `t0`."""
    return {
        "train": {k: train[k] for k in _TRAIN_SUMMARY_KEYS},
        **{k: ev[k] for k in _EVAL_RESULT_KEYS},
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def _markdown(report: dict) -> str:
    dims = ("VQ", "MQ", "TA")
    seeds = report["seeds"]
    lines = [
        f"# Flow alignment in miniature (pairs target {report['weights']}, {report['steps']} steps, "
        f"{len(seeds)} seeds {seeds}, {report['prompts']} prompts each)",
        "",
        "Win rate over the pretrained generator, mean [95% interval]; reward model / oracle.",
        "",
        "| variant | " + " | ".join(f"{d} reward / oracle" for d in dims) + " | reward hacking (seeds) |",
        "|---" * 5 + "|",
    ]
    for name, per in report.get("win_rate", {}).items():
        cells = [f"{fmt(per['reward'][d])} / {fmt(per['oracle'][d])}" for d in dims]
        hacked = sum(bool(r["reward_hacking"]) for r in report["runs"][name].values())
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {hacked} of {len(report['runs'][name])} |")
    if report.get("claims"):
        lines += ["", "| the paper's claim (Table 3) | verdict here | interval |", "|---|---|---|"]
        for c in report["claims"]:
            ci = c.get("win rate") or c.get("difference")
            lines.append(f"| {c['claim']} | {c['verdict']} | {fmt(ci)} |")
        some = next(iter(next(iter(report["win_rate"].values()))["oracle"].values()))
        lines += ["", f"Intervals: {some['method']}; win rates count ties as ½ ({some['n']} prompts per cell)."]
    return "\n".join(lines) + "\n"
