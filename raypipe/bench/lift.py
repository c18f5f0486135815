"""`raypipe bench lift`: LiFT's three findings in miniature on SynthPref, over several seeds, with 95% intervals.

    raypipe bench lift --out bench-out/lift [--seeds 0,1,2] [--reward reward-out/final] [--parts critic,finetune]

(a) the critic trained on ratings WITH reasons vs on the rating word alone (`train.score_only`): held-out 3-class
    rating accuracy per dimension, on a SynthPref seed the preset was not tuned on (validation seed 1000 + s);
(b) LiFT fine-tuning (`train-flow --algo lift`, SynthPref ratings as the human ratings, real videos mixed in) vs
    the base generator: win rates by the oracle and by a VideoReward model, on the same prompts and noise;
(c) with vs without the real videos: the oracle's MQ (temporal fidelity) win rate of (b) minus that of the run
    without them, paired by seed.
Intervals (`raypipe.bench.stats`): critic accuracies pool every seed's held-out videos in the two-level bootstrap
(seeds, then videos; reasons − score-only paired video by video: both variants of a seed answer one held-out set;
runs without per-video outcomes fall back to a Student-t interval over seeds); win rates
and their differences pool every seed's eval prompts in a two-level bootstrap (seeds, then prompts within a seed;
ties count ½; (c) pairs the two variants prompt by prompt, same prompts and noise). A finding holds here only when
its interval excludes the null (0.5 for a win rate, 0 for a difference), is contradicted when the interval lies
on the other side, and is undecided at this budget otherwise. Writes OUT/lift.json and OUT/lift.md; each run's own
output stays in OUT/<part>/<variant>_s<seed>. Resumable: a run whose outputs are complete (its metrics.json, or
its summary.json and eval/report.json) is read back instead of rerun, so a killed bench continues where it was.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from raypipe.bench.cells import cell, parse_seeds
from raypipe.bench.stats import bootstrap_ci, fmt, mean_ci, paired_ci, paired_differences, verdict, win_rate_ci

DIMS = ("VQ", "MQ", "TA")
CRITIC_VARIANTS = {"reasons": [], "score_only": ["train.score_only=true"]}
FLOW_VARIANTS = {"lift": [], "lift_no_real": ["data.real_synth=0"]}


def run_lift_bench(args) -> dict:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seeds = parse_seeds(args.seeds)
    parts = args.parts.split(",")
    report: dict = {"seeds": seeds, "parts": parts, "critic": {}, "finetune": {}}
    t0 = time.perf_counter()
    if "critic" in parts:
        report["critic"] = _critic_part(args, out, seeds)
        _write(out, report)
    if "finetune" in parts:
        report["finetune"] = _finetune_part(args, out, seeds)
    report["findings"] = findings(report)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    _write(out, report)
    print((out / "lift.md").read_text())
    return report


def _critic_part(args, out: Path, seeds: list[int]) -> dict:
    from raypipe.config import load_config
    from raypipe.recipes.train_critic import CriticTrainConfig
    from raypipe.recipes.train_critic import run as run_train_critic

    runs: dict = {v: {} for v in CRITIC_VARIANTS}
    for seed in seeds:
        for name, extra in CRITIC_VARIANTS.items():
            print(f"== (a) critic {name}, seed {seed}", flush=True)
            overrides = [
                f"train.seed={seed}",
                f"synth_train.seed={1 + 10 * seed}",
                f"synth_val.seed={1000 + seed}",
                f"synth_val.pairs={args.val_pairs}",
                f"train.max_minutes={args.critic_minutes}",
                f"out={out / 'critic' / f'{name}_s{seed}'}",
                "progress=false",
                *extra,
                *args.critic_overrides,
            ]
            cfg = load_config(CriticTrainConfig, args.critic_config, overrides)
            summary = cell(out / "critic" / f"{name}_s{seed}" / "metrics.json", lambda cfg=cfg: run_train_critic(cfg))
            val = summary["val"]
            runs[name][seed] = {
                "steps": summary["steps"],
                "accuracy": {d: val[d]["accuracy"] for d in DIMS if d in val},
                "correct": {d: dict(zip(val["paths"], val[d]["correct"])) for d in DIMS if d in val}
                if "paths" in val
                else None,
                "ta_reasons": (val.get("TA") or {}).get("reasons"),
            }
    return {"runs": runs, **critic_intervals(runs, seeds)}


def critic_intervals(runs: dict, seeds: list[int]) -> dict:
    """Held-out accuracy per variant and dimension, and reasons − score-only. With every run's per-video outcomes
    (`correct`: {path: 1/0/None}) both pool seeds x held-out videos in the two-level bootstrap, the difference
    paired video by video (both variants of a seed answer the same held-out set); otherwise a Student-t interval
    over the per-seed accuracies."""
    per_video = all(r.get("correct") for per in runs.values() for r in per.values())
    if not per_video:
        table = {
            n: {d: mean_ci([r["accuracy"].get(d) for r in runs[n].values()], bounds=(0.0, 1.0)) for d in DIMS}
            for n in runs
        }
        diff = {
            d: paired_ci(
                [runs["reasons"][s]["accuracy"].get(d) for s in seeds],
                [runs["score_only"][s]["accuracy"].get(d) for s in seeds],
                bounds=(-1.0, 1.0),
            )
            for d in DIMS
        }
        return {"accuracy": table, "reasons_minus_score_only": diff}

    def outcomes(run: dict, d: str) -> list[float]:
        return [float(v) for _, v in sorted(run["correct"].get(d, {}).items()) if v is not None]

    table = {n: {d: bootstrap_ci([outcomes(r, d) for r in runs[n].values()]) for d in DIMS} for n in runs}
    diff = {}
    for d in DIMS:
        groups = []
        for s in seeds:
            a, b = (runs[v][s]["correct"].get(d, {}) for v in ("reasons", "score_only"))
            if set(a) != set(b):
                raise ValueError(f"seed {s}: the critic variants answered different held-out videos")
            groups.append([float(a[p] - b[p]) for p in sorted(a) if a[p] is not None and b[p] is not None])
        diff[d] = bootstrap_ci(groups)
    return {"accuracy": table, "reasons_minus_score_only": diff}


def _reward_for_bench(args, out: Path) -> str:
    """The judge: --reward, else a tiny VideoReward trained once as the demo does (150 steps at the 56-px view)."""
    if args.reward:
        return args.reward
    from raypipe.config import load_config
    from raypipe.recipes.demo import DemoConfig
    from raypipe.recipes.train_reward import RewardTrainConfig
    from raypipe.recipes.train_reward import run as run_train_reward

    final = out / "reward" / "final"
    if not (final / "reward_config.json").exists():
        print("== a tiny VideoReward judge (the demo's settings)", flush=True)
        overrides = [*DemoConfig().reward_overrides, f"out={out / 'reward'}", "progress=false"]
        run_train_reward(load_config(RewardTrainConfig, "configs/reward_tiny.yaml", overrides))
    return str(final)


def _finetune_part(args, out: Path, seeds: list[int]) -> dict:
    from raypipe.config import load_config
    from raypipe.recipes.eval_flow import FlowEvalConfig
    from raypipe.recipes.eval_flow import run as run_eval_flow
    from raypipe.recipes.train_flow import FlowTrainConfig
    from raypipe.recipes.train_flow import run as run_train_flow

    reward = _reward_for_bench(args, out)
    runs: dict = {v: {} for v in FLOW_VARIANTS}
    base = str(Path(args.generator).resolve())
    for seed in seeds:
        for name, extra in FLOW_VARIANTS.items():
            print(f"== (b/c) {name}, seed {seed}: train-flow --algo lift, then eval-flow", flush=True)
            run_dir = out / "finetune" / f"{name}_s{seed}"
            overrides = [
                f"generator={base}",
                f"train.seed={seed}",
                f"synth.seed={11 + seed}",
                f"train.max_steps={args.steps}",
                f"out={run_dir}",
                "progress=false",
                *extra,
                *args.overrides,
            ]
            cfg = load_config(FlowTrainConfig, args.flow_config, overrides)
            train = cell(run_dir / "summary.json", lambda cfg=cfg: run_train_flow(cfg))
            ecfg = FlowEvalConfig(
                generator=base,
                lora=str(run_dir / "final"),
                reward=reward,
                prompts=str(args.prompts),
                seed=500 + seed,
                out=str(run_dir / "eval"),
            )
            ev = cell(run_dir / "eval" / "report.json", lambda ecfg=ecfg: run_eval_flow(ecfg))
            runs[name][seed] = {
                "steps": train["steps"],
                "rows": train["row_counts"],
                "oracle_win_rate": ev["oracle_win_rate"],
                "reward_win_rate": ev["reward_win_rate"],
                "reward_hacking": ev["reward_hacking"],
                "outcomes": ev["outcomes"],
            }
    return {"reward": reward, "runs": runs, **finetune_intervals(runs, seeds)}


def finetune_intervals(runs: dict, seeds: list[int]) -> dict:
    """Win rates over the base per variant and judge, and (c) with minus without real videos paired prompt by
    prompt (the oracle's outcomes), each pooled over seeds x prompts in the two-level bootstrap."""
    win_rate = {
        name: {
            judge: {d: win_rate_ci([r["outcomes"][judge].get(d, []) for r in per_seed.values()]) for d in DIMS}
            for judge in ("oracle", "reward")
        }
        for name, per_seed in runs.items()
    }
    real_effect = {d: bootstrap_ci(paired_differences(runs["lift"], runs["lift_no_real"], "oracle", d)) for d in DIMS}
    return {"win_rate": win_rate, "real_minus_no_real": real_effect}


def findings(report: dict) -> list[str]:
    """Plain statements: which of LiFT's findings hold here, which are contradicted, which are undecided."""
    lines = []
    critic = report.get("critic") or {}
    if critic:
        for d, ci in critic["reasons_minus_score_only"].items():
            lines.append(f"(a) reasons help the critic's {d} accuracy: {verdict(ci, 0.0)} (difference {fmt(ci, 3)})")
    tune = report.get("finetune") or {}
    if tune:
        for judge in ("oracle", "reward"):
            for d, ci in tune["win_rate"]["lift"][judge].items():
                lines.append(f"(b) LiFT beats the base on {d} by the {judge}: {verdict(ci)} (win rate {fmt(ci)})")
        ci = tune["real_minus_no_real"]["MQ"]
        lines.append(
            f"(c) real videos help temporal fidelity (oracle MQ win rate): {verdict(ci, 0.0)} (difference {fmt(ci)})"
        )
    return lines


def _write(out: Path, report: dict) -> None:
    (out / "lift.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "lift.md").write_text(markdown(report))


def markdown(report: dict) -> str:
    lines = [f"# LiFT in miniature ({len(report['seeds'])} seeds: {report['seeds']}; mean [95% interval])", ""]
    critic = report.get("critic") or {}
    if critic:
        lines += [
            "## (a) critic: held-out rating accuracy (chance 0.33)",
            "",
            "| variant | VQ | MQ | TA |",
            "|---|---|---|---|",
        ]
        for name, per in critic["accuracy"].items():
            lines.append(f"| {name} | " + " | ".join(fmt(per[d], 3) for d in DIMS) + " |")
        diff = critic["reasons_minus_score_only"]
        lines += ["| reasons − score only | " + " | ".join(fmt(diff[d], 3) for d in DIMS) + " |", ""]
        method = diff["TA"].get("method")
        lines += [
            f"Interval: {method}; the difference is paired video by video."
            if method
            else "Interval: Student-t over the per-seed accuracies.",
            "",
        ]
        reasons = [r["ta_reasons"] for r in critic.get("runs", {}).get("reasons", {}).values() if r.get("ta_reasons")]
        if reasons:
            exact = mean_ci([r["names_wrong_attributes"] for r in reasons], bounds=(0.0, 1.0))
            some = mean_ci([r.get("names_some_wrong_attribute") for r in reasons], bounds=(0.0, 1.0))
            lines += [
                "TA reasons of the critic with reasons, on held-out videos with a wrong attribute (mean over seeds, "
                f"t-interval): name exactly the wrong attributes {fmt(exact, 3)}; name at least one of them and "
                f"nothing false {fmt(some, 3)} (LiFT's goal: 0.70).",
                "",
            ]
    tune = report.get("finetune") or {}
    if tune:
        lines += ["## (b, c) fine-tuning: win rate over the base generator", ""]
        lines += ["| variant | judge | VQ | MQ | TA |", "|---|---|---|---|---|"]
        for name, per in tune["win_rate"].items():
            for judge in ("oracle", "reward"):
                lines.append(f"| {name} | {judge} | " + " | ".join(fmt(per[judge][d]) for d in DIMS) + " |")
        diff = tune["real_minus_no_real"]
        lines += ["| with − without real | oracle | " + " | ".join(fmt(diff[d]) for d in DIMS) + " |", ""]
        some = next(iter(tune["win_rate"].get("lift", {}).get("oracle", {}).values()), None)
        if some and "method" in some:
            lines += [
                f"Each cell pools {some['n']} prompt comparisons ({some['seeds']} seeds; e.g. lift/oracle/VQ: "
                f"{some['decisive']} decisive, {some['ties']} ties). Interval: {some['method']}.",
                "",
            ]
    if report.get("findings"):
        lines += ["## What holds here", "", *[f"- {f}" for f in report["findings"]], ""]
    return "\n".join(lines)
