"""`raypipe bench paper`: every miniature table of the VideoAlign paper over seeds, with intervals and a verdict
per claim, in one resumable command.

    raypipe bench paper --out bench-out/paper --budget small    # ~30 min on 2 cores (a CI-sized check)
    raypipe bench paper --out bench-out/paper --budget full     # a few hours on 2 cores (it says so up front)

Inputs, built once in OUT/inputs (the same for every seed, so the seeds measure the training and evaluation noise
of the methods compared, on one judge and one pair set — as the paper compares its variants on one dataset):
a tiny VideoReward judge (the demo's settings), pairs from the tiny generator's own samples judged by it
(best vs worst by VQ, and by VQ+MQ from the same scored samples), and two latent rewards from the generator's first
blocks (noise-aware, and clean t = 0 only). Then the tables, each a bench of its own run with --seeds:
  Table 6   reward-ablation   regression / BT / BTT / BTT last-token (each seed its own SynthPref sets)
  Table 3   flow-alignment    SFT / Flow-RWR / Flow-DPO β_t / Flow-DPO constant β on the VQ pairs, and Flow-DPO with
                              an SFT term on clean videos (λ_sft = 1: does it keep MQ/TA, which VQ-only DPO loses?)
            flow-alignment    Flow-DPO on VQ+MQ pairs (a multi-dimensional scalarisation row)
  Table 5   nrg               guidance weights x λ sweep; noise-aware vs clean latent reward (App. E)
OUT/paper_tables.md puts each table beside the paper's qualitative claim with a verdict per claim (holds: the
interval excludes the opposite; contradicted; undecided at this budget); OUT/paper.json has every number. A killed
run continues where it stopped: finished inputs and cells are read back (each bench's own resume).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from raypipe.bench.cells import cell, parse_seeds

BUDGETS = {
    "small": {
        "estimate": "about 30 minutes on 2 cores",
        "seeds": "0,1",
        "prompts": 32,
        "sample_prompts": 48,
        "reward_ablation": ["--pairs", "512", "--val-pairs", "128", "--steps", "40", "--epochs", "2"],
        "alignment_steps": 30,
        "latent_reward_steps": 40,
        "strengths": "1,2",
    },
    "full": {
        "estimate": "about 3 hours on 2 cores",
        "seeds": "0,1,2",
        "prompts": 128,
        "sample_prompts": 128,
        "reward_ablation": ["--pairs", "2048", "--val-pairs", "256", "--steps", "400", "--epochs", "4"],
        "alignment_steps": 150,
        "latent_reward_steps": 150,
        "strengths": "0.5,1,2,4",
    },
}
TABLES = ("reward", "alignment", "alignment_vq_mq", "nrg")
CLAIMS = {
    "reward": "Table 6: BTT is as good as BT without ties and clearly better with ties; separate reward tokens "
    "beat reading every dimension from the last token; both beat regression on MOS.",
    "alignment": "Table 3: Flow-DPO with a constant β beats Flow-DPO with β_t, Flow-RWR and SFT on the targeted "
    "dimension, and beats the pretrained model. Sec. 6: SFT on high-quality videos during DPO (dpo_sft) should keep "
    "the dimensions the pairs do not target.",
    "alignment_vq_mq": "Sec. 5: aligning on VQ alone costs the untargeted dimensions; a multi-dimensional "
    "scalarisation (VQ+MQ) is the remedy to check.",
    "nrg": "Table 5 / App. E: the guidance weights steer the dimensions they weight; a noise-aware latent reward "
    "guides where one trained on clean latents only does not.",
}


def run_paper_bench(args) -> dict:
    budget = BUDGETS[args.budget]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seeds = ",".join(str(s) for s in parse_seeds(args.seeds or budget["seeds"]))
    tables = [t.strip() for t in args.tables.split(",")] if args.tables else list(TABLES)
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise ValueError(f"unknown tables {unknown}; choose from {list(TABLES)}")
    print(f"bench paper, budget {args.budget} ({budget['estimate']}), seeds {seeds}, tables {tables}", flush=True)
    t0 = time.perf_counter()
    bar = tqdm(total=1 + len(tables), unit="stage", desc="bench paper", disable=not args.progress)
    inputs = _inputs(args, budget, out / "inputs", tables)
    bar.update(1)
    report = {"budget": args.budget, "seeds": seeds, "inputs": inputs, "tables": {}, "commands": {}}
    for table in tables:
        argv = _table_argv(table, args, budget, out, inputs, seeds)
        report["commands"][table] = "raypipe bench " + " ".join(_quote(a) for a in argv)
        print(f"\n== {table}: {report['commands'][table]}", flush=True)
        report["tables"][table] = _run_bench(argv)
        bar.update(1)
        _write(out, report, t0)
    bar.close()
    _write(out, report, t0)
    print((out / "paper_tables.md").read_text(), flush=True)
    return {"paper_tables": str(out / "paper_tables.md"), "verdicts": verdict_counts(report)}


def _inputs(args, budget: dict, inp: Path, tables: list[str]) -> dict:
    """The shared inputs (each read back when it is already there): judge, pairs, latent rewards."""
    from raypipe.config import SynthConfig, load_config, repo_path
    from raypipe.recipes import sample_pairs, train_latent_reward
    from raypipe.video.synth import make_synthpref

    inputs: dict = {"generator": str(Path(args.generator).resolve())}
    needs_judge = any(t != "reward" for t in tables)
    if not needs_judge:
        return inputs
    inputs["reward"] = judge_checkpoint(inp / "reward")
    if any(t.startswith("alignment") for t in tables):
        print("== inputs: pairs from the generator's own samples, judged", flush=True)
        pairs_cfg = sample_pairs.SamplePairsConfig(
            generator=inputs["generator"],
            reward=inputs["reward"],
            prompts=str(budget["sample_prompts"]),
            k=4,
            weights={"VQ": 1.0},
            seed=7,  # not an eval seed: the pairs' prompts are not the held-out ones
            out=str(inp / "sample_pairs"),
            progress=False,
        )
        cell(inp / "sample_pairs" / "summary.json", lambda: sample_pairs.run(pairs_cfg))
        inputs["pairs_vq"] = str(inp / "sample_pairs" / "pairs")
        inputs["pairs_vq_mq"] = _rescalarised_pairs(inp / "sample_pairs", inp / "pairs_vq_mq", {"VQ": 1.0, "MQ": 1.0})
    if "nrg" in tables:
        synth = inp / "synthpref"
        if not (synth / "manifest.parquet").exists():
            make_synthpref(synth, SynthConfig(pairs=256, seed=5), progress=False)
        for noise in ("uniform", "clean"):
            lr_out = inp / f"latent_reward_{noise}"
            print(f"== inputs: latent reward, noise={noise}", flush=True)
            lr_cfg = load_config(
                train_latent_reward.LatentRewardConfig,
                repo_path("configs/latent_reward_tiny.yaml"),
                [
                    f"generator={inputs['generator']}",
                    f"data.manifest={synth / 'manifest.parquet'}",
                    "train.epochs=100",
                    f"train.max_steps={budget['latent_reward_steps']}",
                    "train.batch=8",
                    f"train.noise={noise}",
                    "eval_draws=2",
                    f"out={lr_out}",
                    "progress=false",
                ],
            )
            cell(lr_out / "summary.json", lambda lr_cfg=lr_cfg: train_latent_reward.run(lr_cfg))
            inputs[f"latent_reward_{noise}"] = str(lr_out / "final")
    return inputs


def judge_checkpoint(folder: Path) -> str:
    """The tiny VideoReward judge every alignment bench scores with (the demo's settings), trained once in
    `folder` (read back when it is there); its checkpoint path."""
    from raypipe.config import load_config, repo_path
    from raypipe.recipes import train_reward
    from raypipe.recipes.demo import DemoConfig

    overrides = [*DemoConfig().reward_overrides, f"out={folder}", "progress=false"]
    cfg = load_config(train_reward.RewardTrainConfig, repo_path("configs/reward_tiny.yaml"), overrides)
    print("== inputs: the VideoReward judge (the demo's settings)", flush=True)
    cell(folder / "summary.json", lambda: train_reward.run(cfg))
    return str(folder / "final")


def _rescalarised_pairs(sampled: Path, out: Path, weights: dict[str, float]) -> str:
    """Best vs worst of the same scored samples under other weights (no new sampling or scoring)."""
    import pyarrow.parquet as pq

    from raypipe.recipes.sample_pairs import best_vs_worst

    target = out / "part-00000.parquet"
    if not target.exists():
        scored = pq.read_table(str(sampled / "relabel"))
        dims = [c[len("score_") :] for c in scored.column_names if c.startswith("score_")]
        pairs, _ = best_vs_worst(scored, dims, weights)
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(pairs, target)
    return str(out)


def _table_argv(table: str, args, budget: dict, out: Path, inputs: dict, seeds: str) -> list[str]:
    """The `raypipe bench ...` command line of one table (also printed, and kept in paper.json)."""
    prompts = str(args.prompts or budget["prompts"])
    common = ["--seeds", seeds, "--out", str(out / table)]
    if table == "reward":
        return ["reward-ablation", *common, *budget["reward_ablation"]]
    if table in ("alignment", "alignment_vq_mq"):
        vq_only = table == "alignment"
        return [
            "flow-alignment",
            *common,
            "--generator",
            inputs["generator"],
            "--reward",
            inputs["reward"],
            "--pairs",
            inputs["pairs_vq" if vq_only else "pairs_vq_mq"],
            "--weights",
            "{VQ: 1}" if vq_only else "{VQ: 1, MQ: 1}",
            "--steps",
            str(budget["alignment_steps"]),
            "--prompts",
            prompts,
            "--variants",
            "sft,rwr,dpo_beta_t,dpo,dpo_sft" if vq_only else "dpo",
        ]
    return [
        "nrg",
        *common,
        "--generator",
        inputs["generator"],
        "--reward",
        inputs["reward"],
        "--latent-reward",
        inputs["latent_reward_uniform"],
        "--clean-latent-reward",
        inputs["latent_reward_clean"],
        "--strength",
        budget["strengths"],
        "--prompts",
        prompts,
    ]


def _run_bench(argv: list[str]) -> dict:
    import importlib

    from raypipe.bench.cli import BENCHES, bench_args

    bench = BENCHES[argv[0]]
    return getattr(importlib.import_module(f"raypipe.bench.{bench.module}"), bench.function)(
        bench_args(argv[0], argv[1:])
    )


def _quote(a: str) -> str:
    return f"'{a}'" if any(c in a for c in " {}:,") and not a.startswith("/") else a


def verdict_counts(report: dict) -> dict:
    counts: dict = {}
    for result in report["tables"].values():
        for c in result.get("claims", []):
            counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
    return counts


def _write(out: Path, report: dict, t0: float) -> None:
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    (out / "paper.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "paper_tables.md").write_text(markdown(report, out))


MD_FILES = {
    "reward": "ablation.md",
    "alignment": "flow_alignment.md",
    "alignment_vq_mq": "flow_alignment.md",
    "nrg": "nrg.md",
}


def markdown(report: dict, out: Path) -> str:
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    lines = [
        f"# The paper's tables in miniature ({date}, budget {report['budget']}, seeds {report['seeds']})",
        "",
        f"Wall time {report.get('wall_s', 0) / 60:.0f} min. Verdicts: holds = the 95% interval excludes the "
        "opposite; contradicted = it lies on the opposite side; undecided = it overlaps the null at this budget. "
        f"Verdict counts: {verdict_counts(report)}.",
        "",
    ]
    for table in report["tables"]:
        lines += [f"## {table}", "", f"The paper: {CLAIMS[table]}", "", f"`{report['commands'][table]}`", ""]
        md = out / table / MD_FILES[table]
        lines += [md.read_text().replace("\n# ", "\n### ").lstrip("# ") if md.exists() else "(no table)", ""]
    return "\n".join(lines)
