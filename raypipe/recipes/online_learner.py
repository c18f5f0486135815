"""train-online's learner (`train_func`): the Ray Train + DeepSpeed group whose rank 0 drives each round (SPEC §9).

Rank 0 puts the adapters in the object store (policy version = round), has the rollout pool sample with them and
the reward pools score the samples (`distributed.online.round_collector`), then hands the round to every rank by
the object store; every rank trains on its share (`flow.online_training.grpo_round` / `dpo_round`); rank 0 writes
the round's line, the guard decides, and a checkpoint per round lets the same command resume at the last finished
round. `raypipe.recipes.train_online` (config, checks, the pools, `run`) drives it.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from raypipe.config import build_config
from raypipe.distributed.loop import log_scalars, resume, save_and_report, say, tensorboard_writer, world_rank
from raypipe.distributed.trainer import deepspeed_engine
from raypipe.flow.families import load_family
from raypipe.flow.lora import add_lora, save_lora, set_reference
from raypipe.flow.online_training import (
    dpo_round,
    grpo_round,
    keep_if_best,
    numbers,
    policy_rounds_ago,
    real_latents,
    restore_best,
    write_grid,
)
from raypipe.recipes.train_online import OnlineConfig, write_rounds


def train_func(config: dict) -> None:
    import ray
    import torch.distributed as dist

    from raypipe.distributed.online import SamplingSettings, lora_state, round_collector, state_hash
    from raypipe.flow.online import best_round, hacking_detected, round_record, weighted_rewards

    cfg = build_config(OnlineConfig, config["cfg"])
    t, dims = cfg.train, config["dims"]
    torch.manual_seed(t.seed)
    gen = load_family(cfg.generator, dtype=cfg.dtype, device="cuda" if t.use_gpu else "cpu")
    add_lora(gen.transformer, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, gen.lora_targets, cfg.lora.experts)
    per_round = config["steps_per_round"]
    engine = deepspeed_engine(gen.transformer, t, t.rounds * per_round, bf16=t.use_gpu and cfg.dtype == "bfloat16")
    progress = resume(engine)
    progress.setdefault("round", 0)
    progress.setdefault("rounds", [])
    if progress["resumes"] and "at_round" not in progress["resumes"][-1]:
        progress["resumes"][-1]["at_round"] = progress["round"]  # the first round this attempt runs
    rank, world = world_rank(), dist.get_world_size()
    sampling = SamplingSettings(t.steps, t.cfg_scale, gen.shift, t.noise_level, keep_states=t.algo == "grpo")
    uncond = gen.encode_prompts([""])
    real = real_latents(gen, cfg.clip, config.get("real")) if t.lambda_sft > 0 else None
    writer = tensorboard_writer(config.get("tensorboard_dir"))
    if progress.get("guard"):  # a rerun of a run the guard stopped: its final adapters stand
        if rank == 0:
            say(f"guard: this run was stopped after round {progress['guard']['stopped_after_round']}; nothing to do")
        return
    folder = Path(config["rounds_file"]).parent
    collect = None
    if rank == 0:  # rank 0's collect(round, version, adapters): rollout, reward, the guard's judge
        g, pools = cfg.guard, config["pools"]
        judge = None if g.rounds <= 0 or g.judge == "none" else ("oracle" if g.judge == "oracle" else pools.judge)
        oracle = cfg.oracle or judge == "oracle"
        collect = round_collector(
            config["rollout"],
            pools.scorer(),
            config["prompts"],
            t.prompts_per_round,
            t.k,
            cfg.seed,
            sampling,
            oracle,
            judge,
            g.weights or cfg.weights,
        )
    ahead = ThreadPoolExecutor(1) if t.overlap and rank == 0 else None  # the next round's rollout, while training
    pending = None
    try:
        for rnd in range(progress["round"], t.rounds):
            t0 = time.perf_counter()
            # --- rollout and reward, driven by rank 0; every rank gets the round through the object store
            box = [None]
            if rank == 0:
                state = lora_state(engine.module)  # the learner's adapters now: policy version `rnd`
                data = pending.result() if pending is not None else collect(rnd, rnd, state)
                pending = None
                if ahead is not None and rnd + 1 < t.rounds:  # round rnd+1 samples with version rnd while rnd trains
                    pending = ahead.submit(collect, rnd + 1, rnd, state)
                keep_if_best(progress, rnd, data["judge"], data.pop("state"), folder / "best_round")
                if t.ref_rounds:
                    ref, missing = policy_rounds_ago(folder / "policy_rounds", state, rnd, t.ref_rounds)
                    if missing:
                        say(f"round {rnd}: round {rnd - t.ref_rounds}'s policy is not here; the reference is the base")
                    data["ref_state"] = ref
                    data["reference_hash"] = state_hash(ref) if ref is not None else "base"
                data["wait_s"] = time.perf_counter() - t0
                box = [ray.put(data)]
            dist.broadcast_object_list(box, src=0)
            data = ray.get(box[0])
            if t.ref_rounds:
                set_reference(engine.module, data["ref_state"])  # None: the base (fewer than N rounds so far)
            waited = data["wait_s"] if t.overlap else sum(data["seconds"].values())
            sync_s = time.perf_counter() - t0 - waited
            r, ok = weighted_rewards(data["scores"], data["errors"], dims, cfg.weights)
            # --- the update
            t1 = time.perf_counter()
            generator = torch.Generator().manual_seed(cfg.seed * 7_919 + rnd)
            if t.algo == "grpo":
                stats = grpo_round(gen, engine, t, data, r, ok, uncond, generator, rank, world, per_round, real)
            else:
                stats = dpo_round(gen, engine, t, data, r, ok, rank, world, per_round, generator, real)
            train_s = time.perf_counter() - t1
            n = len(data["errors"])
            record = {
                **round_record(rnd, data["scores"], data["errors"], dims, r, ok, data["oracle"]),
                "version": int(data["versions"].max()),
                **stats,
                "time_s": {
                    "rollout": round(data["seconds"]["rollout"], 2),
                    "reward": round(data["seconds"]["reward"], 2),
                    "train": round(train_s, 2),
                    "sync": round(max(0.0, sync_s), 2),
                    "wait": round(data["wait_s"], 2),  # the learner waiting for the round's samples
                    "round": round(time.perf_counter() - t0, 2),  # the whole round before its checkpoint
                },
                "samples_per_s": {
                    "rollout": round(n / max(1e-9, data["seconds"]["rollout"]), 3),
                    "reward": round(n / max(1e-9, data["seconds"]["reward"]), 3),
                    "train": round(n / max(1e-9, train_s), 3),
                },
                "learner_version": rnd,
                **({"reference_hash": data["reference_hash"]} if t.ref_rounds else {}),
                "prompts": data["round_prompts"],
                "learner_hash": data["learner_hash"],
                "actor_hashes": data["lora_hashes"],
                "judge": data["judge"],
            }
            progress["rounds"].append(record)
            progress["round"] = rnd + 1
            stop = hacking_detected(
                [x["weighted_mean"] for x in progress["rounds"]],
                [x.get("judge") for x in progress["rounds"]],
                cfg.guard.rounds,
            )
            if stop:
                best = best_round([x.get("judge") for x in progress["rounds"]])
                progress["guard"] = {"stopped_after_round": rnd, "best_round": best}
                if rank == 0:
                    m = cfg.guard.rounds
                    say(f"guard: the reward rose while the judge fell for {m} rounds; stopping, keeping round {best}")
                    folder = Path(config["rounds_file"]).parent / "best_round"
                    progress["guard"]["best_restored"] = restore_best(engine.module, folder, best)
                    if not progress["guard"]["best_restored"]:
                        say(f"guard: round {best}'s adapters are not in {folder} (another machine?): final = the last")
            last = rnd + 1 == t.rounds or stop
            if rank == 0:
                log_scalars(writer, {"step": rnd, **numbers(record)})
                if cfg.grid_every and rnd % cfg.grid_every == 0:
                    write_grid(data, t.k, folder / "grids" / f"round_{rnd:04d}.gif", cfg.fps)
            if rank == 0 and cfg.progress:
                w = record["weighted_mean"]
                say(f"round {rnd}: reward {w}, {record['samples_ok']}/{n} samples, {record['time_s']}")
            if (rnd + 1) % t.checkpoint_every == 0 or last:
                final = (lambda d: save_lora(gen, d) if world_rank() == 0 else None) if last else None
                save_and_report(engine, progress, {"round": rnd + 1, "reward": record["weighted_mean"]}, final)
                if rank == 0:
                    try:  # the driver rewrites it at the end too; here it shows progress while the job runs
                        write_rounds(progress["rounds"], Path(config["rounds_file"]))
                    except OSError:
                        pass
            if stop:
                break
    finally:  # a round being collected ahead is not waited for: the driver removes the pools when this returns
        if ahead is not None:
            ahead.shutdown(wait=False, cancel_futures=True)
    if writer is not None:
        writer.close()
