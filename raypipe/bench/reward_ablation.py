"""`raypipe bench reward-ablation`: the paper's Table 6 in miniature, on SynthPref with ties.

Same data, same budget (steps, batch, LR schedule, seed) for every variant:
  regression (MOS targets), BT (ties dropped), BTT (Rao-Kupper, ties modelled) with separate reward tokens,
  and BTT reading every dimension from the last token.
Each is scored on the same held-out pairs: accuracy without ties and with tie calibration (SPEC §4).
Expectation from the paper: BTT ≈ BT without ties, BTT clearly better with ties; separate tokens ≥ last token.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

VARIANTS = {
    "regression": ["train.loss=regression", "model.head=special_tokens"],
    "bt": ["train.loss=bt", "model.head=special_tokens"],
    "btt": ["train.loss=btt", "model.head=special_tokens"],
    "btt_last_token": ["train.loss=btt", "model.head=last_token"],
}


def run_reward_ablation(args) -> dict:
    from raypipe.config import SynthConfig, load_config
    from raypipe.recipes.train_reward import RewardTrainConfig
    from raypipe.recipes.train_reward import run as run_train_reward
    from raypipe.video.synth import make_synthpref

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    for name, pairs, seed in (("train", args.pairs, args.seed + 1), ("val", args.val_pairs, args.seed + 2)):
        if not (data / name / "manifest.parquet").exists():
            make_synthpref(data / name, SynthConfig(pairs=pairs, seed=seed), progress=True)
    variants = [v.strip() for v in args.variants.split(",")] if args.variants else list(VARIANTS)
    results = {}
    for variant in variants:
        overrides = VARIANTS[variant] + [
            f"data.manifest={data / 'train' / 'manifest.parquet'}",
            f"val_manifest={data / 'val' / 'manifest.parquet'}",
            f"out={out / variant}",
            f"train.max_steps={args.steps}",
            f"train.epochs={args.epochs}",
            f"train.eval_every={args.steps}",
            f"train.checkpoint_every={args.steps}",
            "progress=false",
            f"train.seed={args.seed}",
            *args.overrides,
        ]
        cfg = load_config(RewardTrainConfig, args.config, overrides)
        print(f"\n=== {variant} ===", flush=True)
        start = time.perf_counter()
        summary = run_train_reward(cfg)
        results[variant] = {
            "val": summary["val"],
            "steps": summary["steps"],
            "train_wall_s": round(time.perf_counter() - start, 1),
        }
    table = {
        "benchmark": "reward-ablation",
        "train_pairs": args.pairs,
        "val_pairs": args.val_pairs,
        "steps": args.steps,
        "seed": args.seed,
        "results": results,
    }
    (out / "ablation.json").write_text(json.dumps(table, indent=2))
    (out / "ablation.md").write_text(markdown_table(results))
    print("\n" + markdown_table(results))
    return table


def markdown_table(results: dict) -> str:
    dims = sorted({d for r in results.values() for d in (r["val"] or {})}, key=["VQ", "MQ", "TA"].index)
    head = "| variant | " + " | ".join(f"{d} w/o ties | {d} w/ ties" for d in dims) + " |"
    sep = "|---|" + "---|---|" * len(dims)
    rows = []
    for name, r in results.items():
        cells = []
        for d in dims:
            v = r["val"][d]
            cells += [f"{v['acc_without_ties']:.3f}", f"{v['acc_with_ties']:.3f}"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *rows]) + "\n"
