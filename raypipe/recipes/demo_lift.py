"""The demo's LiFT stage (SPEC §8), after the generator stages: a tiny critic -> it rates the generator's own
samples (stage 6's OUT/sample_pairs/samples.parquet) with `relabel --critic` -> LiFT fine-tuning of the generator on
them, weighted by those ratings, with clean SynthPref renders mixed in as the real videos -> win rates over the base.

The critic's ratings of the samples are set beside the oracle's (the SynthPref stand-in for human raters, mapped to
Good/Normal/Bad as SynthPref's own ratings are), so the report shows how far the critic's weights can be trusted.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from raypipe.config import load_config, repo_path
from raypipe.recipes import eval_flow, relabel, train_critic, train_flow
from raypipe.video.oracle import judge_video
from raypipe.video.synth_ratings import level_rating, ta_rating

DIMS = ("VQ", "MQ", "TA")


def lift_stage(cfg, out: Path, generator: str, reward: str, stage: str) -> dict:
    """Critic, critic relabelling, LiFT fine-tuning and its evaluation; the report's `lift` section."""
    t = time.perf_counter()
    print(
        f"\n=== {stage} LiFT: a tiny critic ({cfg.critic_minutes:g} min) rates the stage-6 samples, then "
        f"reward-weighted fine-tuning ({cfg.lift_steps} steps, real videos mixed in), win rates over the base ===",
        flush=True,
    )
    progress = str(cfg.progress).lower()
    critic_path, critic = _critic(cfg, out, progress)
    rated = out / "lift" / "rated"
    relabel.run(
        relabel.RelabelConfig(
            critic=critic_path,
            input=str(out / "sample_pairs" / "samples.parquet"),
            out=str(rated),
            progress=cfg.progress,
        )
    )
    lift_out = out / "lift" / "finetune"
    trained = train_flow.run(
        load_config(
            train_flow.FlowTrainConfig,
            repo_path("configs/lift_tiny.yaml"),
            [
                f"generator={generator}",
                f"data.manifest={rated}",
                "data.source=weights",
                f"data.real_synth={cfg.lift_real}",
                f"train.max_steps={cfg.lift_steps}",
                f"out={lift_out}",
                f"progress={progress}",
                *cfg.dpo_overrides,
            ],
        )
    )
    evaluated = eval_flow.run(
        eval_flow.FlowEvalConfig(
            generator=generator,
            lora=str(lift_out / "final"),
            reward=reward,
            prompts=str(cfg.eval_prompts),
            out=str(lift_out / "eval"),
        )
    )
    return {
        "lift": {
            "critic": critic,
            "samples": rated_samples(rated),
            "train": trained,
            "eval": evaluated,
        },
        "lift_s": round(time.perf_counter() - t, 2),
    }


def _critic(cfg, out: Path, progress: str) -> tuple[str, dict]:
    """The critic checkpoint (`cfg.critic`, else a tiny one trained now) and what the report says about it."""
    if cfg.critic:
        return str(repo_path(cfg.critic)), {"checkpoint": cfg.critic, "steps": None, "val": {}, "examples": []}
    critic_out = out / "lift" / "critic"
    overrides = [*cfg.critic_overrides, f"train.max_minutes={cfg.critic_minutes}", f"out={critic_out}"]
    config = load_config(
        train_critic.CriticTrainConfig, repo_path("configs/critic_tiny.yaml"), [*overrides, f"progress={progress}"]
    )
    summary = train_critic.run(config)
    report = {"steps": summary["steps"], "val": summary["val"], "examples": summary["examples"][:3]}
    return str(critic_out / "final"), report


def oracle_ratings(verdict: dict) -> dict[str, str | None]:
    """The oracle's view of a sample as ratings (SynthPref's thresholds): VQ/MQ levels, TA wrong attributes."""
    if "error" in verdict:
        return {d: None for d in DIMS}
    return {
        "VQ": level_rating(verdict["VQ"]),
        "MQ": level_rating(verdict["MQ"]),
        "TA": ta_rating(3 - int(round(verdict["TA"]))),
    }


def rated_samples(rated: Path, examples: int = 4) -> dict:
    """What the critic said about the generator's samples: rating counts per dimension, agreement with the oracle's
    ratings, the LiFT weights, a few answers."""
    table = pq.read_table(rated).to_pylist()
    ok = [r for r in table if r.get("error") is None]
    oracle = [oracle_ratings(judge_video(r["uri"], r["prompt"])) for r in ok]
    summary = {
        "videos": len(table),
        "error_rows": len(table) - len(ok),
        "ratings": {d: dict(Counter(r[f"rating_{d}"] for r in ok)) for d in DIMS},
        "oracle_ratings": {d: dict(Counter(o[d] for o in oracle)) for d in DIMS},
        "agreement_with_oracle": {
            d: round(sum(r[f"rating_{d}"] == o[d] for r, o in zip(ok, oracle)) / max(1, len(ok)), 3) for d in DIMS
        },
        "mean_lift_weight": round(sum(r["lift_weight"] for r in ok) / max(1, len(ok)), 4) if ok else None,
        "examples": [
            {"prompt": r["prompt"], **{d: f"{r[f'rating_{d}']}. {r[f'reason_{d}']}".strip() for d in DIMS}}
            for r in ok[:examples]
        ],
    }
    return summary
