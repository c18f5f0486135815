"""`raypipe bench reward-ablation`: the paper's Table 6 in miniature, on SynthPref with ties.

Same data, same budget (steps, batch, LR schedule, seed) for every variant:
  regression (MOS targets), BT (ties dropped), BTT (Rao-Kupper, ties modelled) with separate reward tokens,
  and BTT reading every dimension from the last token.
Each is scored on the same held-out pairs: accuracy without ties and with tie calibration (SPEC §4).
Expectation from the paper: BTT ≈ BT without ties, BTT clearly better with ties; separate tokens ≥ last token.

`--seeds 0,1,2` repeats everything per seed (its own SynthPref train/held-out sets, seeds 1+10s / 2+10s, and
training seed s; OUT/s<seed>/<variant>, read back on a rerun). Accuracies are means over seeds with a Student-t 95%
interval (cut at [0, 1]; differences at [−1, 1]); the claims (BTT beats BT, regression and the last-token head on
accuracy with ties) are per-seed paired differences with a verdict each. The held-out pairs differ per seed, so the
interval covers both the training noise and the choice of held-out pairs; tie calibration (ε*) is fitted on each
held-out set, which is why the pairs are not resampled individually.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from raypipe.bench.cells import cell, parse_seeds
from raypipe.bench.stats import fmt, mean_ci, paired_ci, verdict

DIMS = ("VQ", "MQ", "TA")
CLAIMS = (("btt", "bt"), ("btt", "regression"), ("btt", "btt_last_token"))  # (better, worse) on acc with ties

VARIANTS = {
    "regression": ["train.loss=regression", "model.head=special_tokens"],
    "bt": ["train.loss=bt", "model.head=special_tokens"],
    "btt": ["train.loss=btt", "model.head=special_tokens"],
    "btt_last_token": ["train.loss=btt", "model.head=last_token"],
}


def run_reward_ablation(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    variants = [v.strip() for v in args.variants.split(",")] if args.variants else list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    seeds = parse_seeds(args.seeds)
    per_seed = {seed: _one_seed(args, out / f"s{seed}", seed, variants) for seed in seeds}
    table = {
        "benchmark": "reward-ablation",
        "train_pairs": args.pairs,
        "val_pairs": args.val_pairs,
        "steps": args.steps,
        "seeds": seeds,
        "per_seed": per_seed,
        **ablation_intervals(per_seed, variants),
    }
    (out / "ablation.json").write_text(json.dumps(table, indent=2))
    (out / "ablation.md").write_text(markdown_table(table))
    print("\n" + markdown_table(table))
    return table


def _one_seed(args, out: Path, seed: int, variants: list[str]) -> dict:
    from raypipe.config import SynthConfig, load_config
    from raypipe.recipes.train_reward import RewardTrainConfig
    from raypipe.recipes.train_reward import run as run_train_reward
    from raypipe.video.synth import make_synthpref

    data = out / "data"
    for name, pairs, synth_seed in (("train", args.pairs, 1 + 10 * seed), ("val", args.val_pairs, 2 + 10 * seed)):
        if not (data / name / "manifest.parquet").exists():
            make_synthpref(data / name, SynthConfig(pairs=pairs, seed=synth_seed), progress=True)
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
            f"train.seed={seed}",
            *args.overrides,
        ]
        cfg = load_config(RewardTrainConfig, args.config, overrides)
        print(f"\n=== {variant}, seed {seed} ===", flush=True)
        start = time.perf_counter()
        summary = cell(out / variant / "summary.json", lambda cfg=cfg: run_train_reward(cfg))
        results[variant] = {
            "val": summary["val"],
            "steps": summary["steps"],
            "train_wall_s": round(time.perf_counter() - start, 1),
        }
    return results


def ablation_intervals(per_seed: dict, variants: list[str]) -> dict:
    """Per variant and dimension the mean accuracy (without / with ties) over seeds with its t-interval; the
    paper's claims as per-seed paired differences of accuracy with ties."""

    def acc(variant: str, dim: str, key: str) -> list:
        return [((r.get(variant) or {}).get("val") or {}).get(dim, {}).get(key) for r in per_seed.values()]

    accuracy = {
        v: {
            d: {k: mean_ci(acc(v, d, k), bounds=(0.0, 1.0)) for k in ("acc_without_ties", "acc_with_ties")}
            for d in DIMS
        }
        for v in variants
    }
    claims = []
    for better, worse in CLAIMS:
        if better in variants and worse in variants:
            for d in DIMS:
                ci = paired_ci(acc(better, d, "acc_with_ties"), acc(worse, d, "acc_with_ties"), bounds=(-1.0, 1.0))
                text = f"{better} beats {worse} on {d} accuracy with ties"
                claims.append({"claim": text, "verdict": verdict(ci, 0.0), "difference": ci})
    return {"accuracy": accuracy, "claims": claims}


def markdown_table(table: dict) -> str:
    seeds = table["seeds"]
    head = "| variant | " + " | ".join(f"{d} w/o ties | {d} w/ ties" for d in DIMS) + " |"
    lines = [
        f"Held-out accuracy, mean over {len(seeds)} seeds {seeds} [Student-t 95% interval, cut at [0, 1]]",
        "",
        head,
        "|---|" + "---|---|" * len(DIMS),
    ]
    for name, per in table["accuracy"].items():
        cells = [fmt(per[d][k], 3) for d in DIMS for k in ("acc_without_ties", "acc_with_ties")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if table["claims"]:
        lines += ["", "| the paper's claim (Table 6) | verdict here | difference |", "|---|---|---|"]
        lines += [f"| {c['claim']} | {c['verdict']} | {fmt(c['difference'], 3)} |" for c in table["claims"]]
    return "\n".join(lines) + "\n"
