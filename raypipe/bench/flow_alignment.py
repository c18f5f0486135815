"""`raypipe bench flow-alignment`: the paper's Table 3 in miniature.

    raypipe bench flow-alignment --generator gen-out/flow/final --reward reward-out/final \\
        --pairs gen-pairs/pairs --weights '{VQ: 1}' --out bench-out/flow-alignment

From ONE pretrained tiny generator, ONE reward model and ONE pair set (e.g. `raypipe sample-pairs`, relabel-shaped):
SFT (winners), Flow-RWR (all samples, softmax(r/τ) weights), Flow-DPO with β_t = β(1−t)² and Flow-DPO with constant
β — the same LoRA, learning rate, steps and seed — then `eval-flow` of each against the pretrained generator on the
same prompts and initial noise: per-dimension win rates by the reward model and by the oracle side by side.
Writes OUT/flow_alignment.json and OUT/flow_alignment.md (each variant's run in OUT/<variant>).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

VARIANTS = {
    "sft": ["train.algo=sft"],
    "rwr": ["train.algo=rwr"],
    "dpo_beta_t": ["train.algo=dpo", "train.beta_schedule=derived"],
    "dpo": ["train.algo=dpo", "train.beta_schedule=constant"],
}


_TRAIN_SUMMARY_KEYS = ("steps", "rows", "row_counts", "last", "wall_s")
_EVAL_RESULT_KEYS = (
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
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    report = _empty_report(args, weights)
    for name in variants:
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; choose from {list(VARIANTS)}")
        print(f"== {name}: train-flow", flush=True)
        t0 = time.perf_counter()
        cfg = load_config(FlowTrainConfig, args.config, _train_overrides(args, weights, out, name))
        train = run_train_flow(cfg)
        print(f"== {name}: eval-flow", flush=True)
        ev = run_eval_flow(_eval_config(args, out, name))
        report["variants"][name] = _variant_summary(train, ev, t0)
        (out / "flow_alignment.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "flow_alignment.md").write_text(_markdown(report))
    print(_markdown(report), flush=True)
    return report


def _empty_report(args, weights: dict) -> dict:
    """The report's shared inputs, with no variant run yet."""
    return {
        "generator": args.generator,
        "reward": args.reward,
        "pairs": args.pairs,
        "weights": weights,
        "steps": args.steps,
        "seed": args.seed,
        "prompts": args.prompts,
        "variants": {},
    }


def _train_overrides(args, weights: dict, out: Path, name: str) -> list[str]:
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
        f"train.seed={args.seed}",
        "data.latent_cache=latents",
        f"out={out / name}",
        "progress=false",
        *VARIANTS[name],
        *(args.overrides or []),
    ]


def _eval_config(args, out: Path, name: str):
    """`eval-flow` config of variant `name`'s final LoRA against the pretrained generator."""
    from raypipe.config import ClipConfig
    from raypipe.recipes.eval_flow import FlowEvalConfig

    return FlowEvalConfig(
        generator=args.generator,
        lora=str(out / name / "final"),
        reward=args.reward,
        prompts=str(args.prompts),
        out=str(out / name / "eval"),
        clip=ClipConfig(args.frames, args.height, args.width),
        seed=args.seed,
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
    lines = [
        f"# Flow alignment in miniature (pairs target {report['weights']}, {report['steps']} steps, "
        f"seed {report['seed']}, {report['prompts']} prompts)",
        "",
        "| variant | " + " | ".join(f"{d} reward / oracle" for d in dims) + " | reward hacking |",
        "|---" * 5 + "|",
    ]
    for name, v in report["variants"].items():
        cells = [
            f"{v['reward_win_rate'].get(d, float('nan')):.2f} / {v['oracle_win_rate'].get(d, float('nan')):.2f}"
            for d in dims
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'; '.join(v['reward_hacking']) or '-'} |")
    return "\n".join(lines) + "\n"
