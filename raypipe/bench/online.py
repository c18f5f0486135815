"""`raypipe bench online`: offline Flow-DPO vs online Flow-DPO vs Flow-GRPO at an equal budget of reward calls,
over seeds, with 95% intervals (issue "online alignment").

    raypipe bench online --out bench-out/online --budget small    # ~25 min on 2 cores
    raypipe bench online --out bench-out/online --budget full     # ~2.5 hours on 2 cores (3 seeds)

One pretrained tiny generator (the asset) and one VideoReward judge (the demo's settings, trained once in
OUT/inputs, or --reward). Per seed, every arm spends the same number of scored samples (--samples):
  offline_dpo   `sample-pairs` (samples/k prompts × k, scored once) then `train-flow` Flow-DPO (constant β) on
                best vs worst of each prompt — today's offline loop;
  online_dpo    `train-online train.algo=dpo`: rounds of prompts_per_round × k fresh samples, best vs worst;
  grpo          `train-online train.algo=grpo` (Flow-GRPO, the SDE sampler, group advantages, clipped ratio, KL);
  grpo_overlap  (first seed only) the same with train.overlap=true: round k+1's rollouts while round k trains.
Every arm trains the same LoRA (rank, alpha) with the same learning rate (configs/flow_tiny.yaml's; --grpo-lr sets
the GRPO arms' own), and the online DPO arm takes the same optimizer steps per pair as the offline one (online DPO:
`updates` passes of a round's pairs; offline: samples/k pairs × updates / batch steps). Trailing key=value
overrides reach the online arms only; --arms runs some arms (the others' finished cells in OUT still count).
Each arm's adapters are then judged by `eval-flow` against the pretrained generator on --prompts held-out prompts
(the eval seed's prompts and noise, the same for every arm): per-dimension win rates by the reward model and by the
SynthPref oracle, ties ½, two-level bootstrap over seeds and prompts. Claims tested on paired per-prompt
differences: online DPO ≥ offline DPO on VQ by the oracle (the issue's goal), GRPO ≥ offline DPO; the untargeted
MQ/TA are reported beside. The guard's decisions (stopped? best round?), the time split per round (rollout / reward
/ train / sync / wait) and the overlap speedup in rounds per hour (median round time, rounds after the first) are in
the report.
Writes OUT/online.json and OUT/online.md; a killed run continues with the cells it has not finished.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from raypipe.bench.cells import cell, parse_seeds
from raypipe.bench.stats import bootstrap_ci, fmt, paired_differences, verdict, win_rate_ci

BUDGETS = {
    "small": {"estimate": "about 25 minutes on 2 cores", "seeds": "0,1", "samples": 256, "prompts": 32},
    "full": {"estimate": "about 2.5 hours on 2 cores", "seeds": "0,1,2", "samples": 1024, "prompts": 128},
}
ARMS = ("offline_dpo", "online_dpo", "grpo", "grpo_overlap")
DIMS = ("VQ", "MQ", "TA")
GUARD_ROUNDS = 3  # the guard's M (train-online's default)
TRAIN_SEED = 1000  # training prompts and noise come from TRAIN_SEED + seed; eval prompts from seed (held out)


def run_online_bench(args) -> dict:
    from raypipe.bench.paper import judge_checkpoint

    budget = BUDGETS[args.budget]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seeds = parse_seeds(args.seeds or budget["seeds"])
    samples = int(args.samples or budget["samples"])
    prompts = int(args.prompts or budget["prompts"])
    k, per_round = args.k, args.prompts_per_round
    if samples % (k * per_round):
        raise ValueError(f"--samples ({samples}) must be a multiple of k x prompts-per-round ({k * per_round})")
    arms = [a.strip() for a in (getattr(args, "arms", None) or ",".join(ARMS)).split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise ValueError(f"--arms must name some of {', '.join(ARMS)}, got {unknown or arms}")
    print(f"bench online, budget {args.budget} ({budget['estimate']}), seeds {seeds}, {samples} scored samples per arm")
    reward = args.reward or judge_checkpoint(out / "inputs" / "reward")
    report = {
        "budget": args.budget,
        "seeds": seeds,
        "samples": samples,
        "k": k,
        "prompts_per_round": per_round,
        "rounds": samples // (k * per_round),
        "eval_prompts": prompts,
        "generator": args.generator,
        "reward": reward,
        "runs": {},
    }
    for seed in seeds:
        for arm in ARMS:
            if arm == "grpo_overlap" and seed != seeds[0]:
                continue
            run_dir = out / f"{arm}_s{seed}"
            if arm not in arms and not _finished(arm, run_dir):
                continue  # not asked for, and not finished before: nothing of it is trained here
            print(f"== {arm}, seed {seed}", flush=True)
            t0 = time.perf_counter()
            train = _train(arm, args, reward, samples, seed, run_dir)
            ev = cell(run_dir / "eval" / "report.json", lambda d=run_dir, s=seed: _eval(args, reward, prompts, d, s))
            report["runs"].setdefault(arm, {})[seed] = {
                "train": train,
                "outcomes": ev["outcomes"],
                "reward_hacking": ev.get("reward_hacking"),
                "wall_s": round(time.perf_counter() - t0, 1),
            }
            (out / "online.json").write_text(json.dumps(report, indent=2, default=str))
    report["lr"] = {arm: sorted({r["train"]["lr"] for r in per.values()}) for arm, per in report["runs"].items()}
    report.update(online_intervals(report["runs"]))
    report["overlap"] = overlap_speedup(report["runs"], seeds[0])
    (out / "online.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "online.md").write_text(markdown(report))
    print(markdown(report), flush=True)
    return {"online_md": str(out / "online.md"), "claims": [(c["claim"], c["verdict"]) for c in report["claims"]]}


# --- the arms ----------------------------------------------------------------------------------------------------
def _train(arm: str, args, reward: str, samples: int, seed: int, run_dir: Path) -> dict:
    """Train one arm (a finished one is read back) and return what the report keeps of it."""
    pairs = samples // args.k
    if arm == "offline_dpo":
        return _offline(args, reward, samples, seed, run_dir, pairs)
    from raypipe.config import load_config, repo_path
    from raypipe.recipes.train_flow import FlowTrainConfig
    from raypipe.recipes.train_online import OnlineConfig
    from raypipe.recipes.train_online import run as run_online

    offline = load_config(FlowTrainConfig, repo_path("configs/flow_tiny.yaml"))  # the same adapters as offline
    grpo_lr = getattr(args, "grpo_lr", None)
    overrides = [
        f"generator={Path(args.generator).resolve()}",
        f"reward={reward}",
        f"lora.r={offline.lora.r}",
        f"lora.alpha={offline.lora.alpha}",
        f"train.lr={grpo_lr if grpo_lr and arm != 'online_dpo' else offline.train.lr}",
        f"prompts={pairs}",
        f"seed={TRAIN_SEED + seed}",
        f"train.algo={'dpo' if arm == 'online_dpo' else 'grpo'}",
        f"train.rounds={samples // (args.k * args.prompts_per_round)}",
        f"train.prompts_per_round={args.prompts_per_round}",
        f"train.k={args.k}",
        f"train.steps={args.sampling_steps}",
        *(
            [f"train.updates={args.updates}", f"train.batch={args.batch}", f"train.beta={args.beta}"]
            if arm == "online_dpo"
            else []
        ),
        f"train.seed={seed}",
        f"train.overlap={'true' if arm == 'grpo_overlap' else 'false'}",
        f"train.checkpoint_every={args.checkpoint_every}",
        "guard.rounds=0",  # every arm spends its whole budget; the guard's decisions are replayed from rounds.jsonl
        "grid_every=0",
        "progress=false",
        f"out={run_dir}",
        *(args.overrides or []),
    ]
    cfg = load_config(OnlineConfig, repo_path("configs/online_tiny.yaml"), overrides)
    _same_lr(run_dir / "config.yaml", cfg.train.lr)
    summary = cell(run_dir / "summary.json", lambda: run_online(cfg))
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    return {
        "rounds": len(rounds),
        "scored_samples": sum(r["samples"] for r in rounds),
        "guard": guard_replay(rounds, GUARD_ROUNDS),
        "time_s": {key: _mean([r["time_s"][key] for r in rounds]) for key in rounds[0]["time_s"]},
        "round_s": [r["time_s"]["round"] for r in rounds],
        "reward_first_last": [rounds[0]["weighted_mean"], rounds[-1]["weighted_mean"]],
        "judge_first_last": [rounds[0].get("judge"), rounds[-1].get("judge")],
        "wall_s": summary["wall_s"],
        "lr": cfg.train.lr,
    }


def _finished(arm: str, run_dir: Path) -> bool:
    """Whether an arm's run in `run_dir` is finished: trained and evaluated (read back, never redone)."""
    trained = ["pairs/summary.json", "train/summary.json"] if arm == "offline_dpo" else ["summary.json", "rounds.jsonl"]
    return all((run_dir / f).exists() for f in [*trained, "eval/report.json"])


def _same_lr(config: Path, lr: float) -> None:
    """A run folder trained (or started) at another learning rate is not this arm's run: refused, not read back."""
    import yaml

    if config.exists():
        done = float(((yaml.safe_load(config.read_text()) or {}).get("train") or {}).get("lr", lr))
        if not np.isclose(done, lr, rtol=1e-9, atol=0.0):
            raise ValueError(f"{config.parent} was trained at train.lr={done}, this run asks {lr}: use another --out")


def _offline(args, reward: str, samples: int, seed: int, run_dir: Path, pairs: int) -> dict:
    """sample-pairs (samples/k prompts × k, scored once) then train-flow Flow-DPO on best vs worst."""
    from raypipe.bench.flow_alignment import _train_overrides
    from raypipe.config import load_config, repo_path
    from raypipe.recipes import sample_pairs
    from raypipe.recipes.train_flow import FlowTrainConfig
    from raypipe.recipes.train_flow import run as run_train_flow

    generator = str(Path(args.generator).resolve())
    pairs_cfg = sample_pairs.SamplePairsConfig(
        generator=generator,
        reward=reward,
        prompts=str(pairs),
        k=args.k,
        weights={"VQ": 1.0},
        seed=TRAIN_SEED + seed,
        steps=args.sampling_steps,
        out=str(run_dir / "pairs"),
        progress=False,
    )
    sampled = cell(run_dir / "pairs" / "summary.json", lambda: sample_pairs.run(pairs_cfg))
    steps = max(1, pairs * args.updates // args.batch)  # the online arms' optimizer steps per pair
    shared = SimpleNamespace(
        generator=generator,
        pairs=sampled["pairs_path"],
        frames=9,
        height=32,
        width=32,
        steps=steps,
        overrides=[f"train.batch={args.batch}", f"train.beta={args.beta}"],
    )
    overrides = _train_overrides(shared, {"VQ": 1.0}, run_dir / "train", "dpo", seed)
    cfg = load_config(FlowTrainConfig, repo_path("configs/flow_tiny.yaml"), overrides)
    _same_lr(run_dir / "train" / "config.yaml", cfg.train.lr)
    train = cell(run_dir / "train" / "summary.json", lambda: run_train_flow(cfg))
    return {
        "scored_samples": sampled["samples"],
        "pairs": sampled["pairs"],
        "steps": train["steps"],
        "lr": cfg.train.lr,
    }


def _eval(args, reward: str, prompts: int, run_dir: Path, seed: int) -> dict:
    from raypipe.config import ClipConfig
    from raypipe.recipes.eval_flow import FlowEvalConfig
    from raypipe.recipes.eval_flow import run as run_eval_flow

    final = run_dir / ("train/final" if (run_dir / "train").exists() else "final")
    cfg = FlowEvalConfig(
        generator=str(Path(args.generator).resolve()),
        lora=str(final),
        reward=reward,
        prompts=str(prompts),
        out=str(run_dir / "eval"),
        clip=ClipConfig(9, 32, 32),
        seed=seed,
    )
    return run_eval_flow(cfg)


# --- the report --------------------------------------------------------------------------------------------------
def online_intervals(runs: dict) -> dict:
    """Win rates over the base per arm, judge and dimension (pooled over seeds, two-level bootstrap), and the claims:
    each arm beats the base on VQ by the oracle; online DPO / GRPO vs offline DPO, paired per prompt."""
    win = {
        arm: {
            judge: {d: win_rate_ci([r["outcomes"][judge].get(d, []) for r in per.values()]) for d in DIMS}
            for judge in ("reward", "oracle")
        }
        for arm, per in runs.items()
    }
    claims = []
    for arm in runs:
        ci = win[arm]["oracle"]["VQ"]
        claims.append({"claim": f"{arm} beats the base on VQ by the oracle", "verdict": verdict(ci, 0.5), "ci": ci})
    for arm in ("online_dpo", "grpo"):
        if arm in runs and "offline_dpo" in runs:
            for judge in ("oracle", "reward"):
                ci = bootstrap_ci(paired_differences(runs[arm], runs["offline_dpo"], judge, "VQ"))
                text = f"{arm} beats offline_dpo on VQ by the {judge}"
                claims.append({"claim": text, "verdict": verdict(ci, 0.0), "ci": ci})
    return {"win_rate": win, "claims": claims}


def guard_replay(rounds: list[dict], m: int) -> dict:
    """What the reward-hacking guard (judge = the oracle's VQ) would have decided on this run: the first round after
    which it would have stopped (None: never) and the round it would have kept."""
    from raypipe.flow.online import best_round, hacking_detected

    rewards = [r["weighted_mean"] for r in rounds]
    judges = [(r.get("oracle_mean") or {}).get("VQ") for r in rounds]
    stop = next((i for i in range(len(rounds)) if hacking_detected(rewards[: i + 1], judges[: i + 1], m)), None)
    return {
        "m": m,
        "would_stop_after": stop,
        "would_keep": best_round(judges[: stop + 1]) if stop is not None else None,
    }


def overlap_speedup(runs: dict, seed: int) -> dict | None:
    """Rounds per hour of grpo_overlap over grpo (same seed, same machine): the median round time of the rounds
    after the first (the first is never overlapped), and their ratio."""
    try:
        sync = runs["grpo"][seed]["train"]["round_s"][1:]
        over = runs["grpo_overlap"][seed]["train"]["round_s"][1:]
    except KeyError:
        return None
    if not sync or not over:
        return None
    a, b = float(np.median(sync)), float(np.median(over))
    return {
        "sync_round_s": round(a, 3),
        "overlap_round_s": round(b, 3),
        "rounds_per_hour": {"sync": round(3600 / a, 1), "overlap": round(3600 / b, 1)},
        "speedup": round(a / b, 3),
    }


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.mean(values)), 3) if values else None


def markdown(report: dict) -> str:
    lines = [
        f"# Online vs offline alignment in miniature ({report['samples']} scored samples per arm, "
        f"{len(report['seeds'])} seeds {report['seeds']}, {report['eval_prompts']} held-out prompts each)",
        "",
        "Win rate over the pretrained generator, mean [95% interval], reward model / oracle; the pairs and the "
        "online reward target VQ."
        + (
            " Learning rates: "
            + ", ".join(f"{arm} {'/'.join(map(str, lrs))}" for arm, lrs in report["lr"].items())
            + "."
            if report.get("lr")
            else ""
        ),
        "",
        "| arm | " + " | ".join(f"{d} reward / oracle" for d in DIMS) + " | seeds |",
        "|---" * 5 + "|",
    ]
    for arm, per in report.get("win_rate", {}).items():
        cells = [f"{fmt(per['reward'][d])} / {fmt(per['oracle'][d])}" for d in DIMS]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {len(report['runs'][arm])} |")
    if report.get("claims"):
        lines += ["", "| claim | verdict | interval |", "|---|---|---|"]
        lines += [f"| {c['claim']} | {c['verdict']} | {fmt(c['ci'])} |" for c in report["claims"]]
        some = report["claims"][0]["ci"]
        lines += ["", f"Intervals: {some['method']}; win rates count ties as ½."]
    lines += [
        "",
        "| arm, seed | rounds | scored samples | guard (M = 3, replayed) | time per round (s) | reward first → last |",
        "|---|---|---|---|---|---|",
    ]
    for arm, per in report["runs"].items():
        for seed, r in per.items():
            t = r["train"]
            split = " / ".join(f"{k} {v}" for k, v in (t.get("time_s") or {}).items())
            guard = t.get("guard") or {}
            guard_text = (
                f"would stop after {guard['would_stop_after']}, keep {guard['would_keep']}"
                if guard.get("would_stop_after") is not None
                else ("never fires" if guard else "–")
            )
            first_last = " → ".join(str(x) for x in t.get("reward_first_last", [])) or "–"
            steps = f" ({t['steps']} DPO steps)" if "steps" in t else ""
            lines.append(
                f"| {arm}, {seed} | {t.get('rounds', '–')} | {t['scored_samples']}{steps} | {guard_text} | "
                f"{split or '–'} | {first_last} |"
            )
    o = report.get("overlap")
    if o:
        lines += [
            "",
            f"Overlap (seed {report['seeds'][0]}, GRPO): median round {o['sync_round_s']} s synchronous vs "
            f"{o['overlap_round_s']} s overlapped = {o['rounds_per_hour']['sync']} vs "
            f"{o['rounds_per_hour']['overlap']} rounds per hour, speedup ×{o['speedup']}.",
        ]
    return "\n".join(lines) + "\n"
