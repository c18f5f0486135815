"""The learner's side of online training (SPEC §9), without Ray: one round's updates for Flow-GRPO (the recomputed
SDE transitions of the round's samples, advantages within each prompt's group, the clipped ratio and the KL to the
adapters-disabled reference) and online Flow-DPO (best vs worst per prompt), the λ_sft flow-matching term on real
videos, and rank 0's bookkeeping (the guard's best adapters, the round's numbers for TensorBoard, sample grids).
`raypipe.recipes.online_learner` drives them inside its Ray Train loop.

    stats = grpo_round(gen, engine, t, data, r, ok, uncond, generator, rank, world, steps)   # one round's steps
    stats = dpo_round(gen, engine, t, data, r, ok, rank, world, steps, generator)

`data` is the round as `raypipe.distributed.online.collect_round` returns it (states, log_probs, latents, frames,
prompts, groups); `t` the job's `train` section; every rank takes exactly `steps` optimizer steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from raypipe.flow.losses import zero_loss


def real_latents(gen, clip, real: dict | None):
    """The real videos as the generator's latents (decoded to its clip, VAE-encoded once) with their prompts'
    embeddings; None without train.lambda_sft. A video that cannot be decoded is left out (counted)."""
    from raypipe.flow.pairs import generator_clip

    if not real:
        return None
    clips, prompts = [], []
    for uri, prompt in zip(real["uris"], real["prompts"]):
        frames = generator_clip(uri, clip)
        if isinstance(frames, np.ndarray):
            clips.append(frames)
            prompts.append(prompt)
    if not clips:
        raise RuntimeError("train.lambda_sft: none of the real videos could be decoded")
    with torch.no_grad():
        z = torch.cat([gen.encode_videos(np.stack(clips[i : i + 8])) for i in range(0, len(clips), 8)])
        text = gen.encode_prompts(prompts)
    return {"z": z.cpu(), "text": text.cpu(), "left_out": len(real["uris"]) - len(clips)}


def sft_term(gen, engine, real, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Plain flow matching (SPEC §5.3) on `batch` real videos drawn from `real` (the λ_sft term)."""
    from raypipe.flow.losses import flow_error, gen_t_range, noised, sample_t

    idx = torch.randint(0, real["z"].shape[0], (batch,), generator=generator)
    z, text = real["z"][idx].to(gen.device), real["text"][idx].to(gen.device)
    t = sample_t(batch, generator, gen.shift, t_range=gen_t_range(gen))
    eps = torch.randn(z.shape, generator=generator).to(gen.device)
    x_t, v = noised(z, eps, t.to(gen.device))
    return flow_error(gen.velocity(x_t, t.to(gen.device), text, model=engine), v).mean()


def numbers(record: dict, prefix: str = "") -> dict:
    """A round's line flattened to its numbers (`reward_mean/VQ`, `time_s/train`, ...) for TensorBoard."""
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(numbers(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("round", "version"):
            out[f"{prefix}{k}"] = v
    return out


def write_grid(data: dict, k: int, path: Path, fps: float, prompts: int = 4) -> None:
    """The round's samples of its first prompts as a GIF, a row per prompt (rank 0)."""
    from raypipe.flow.evaluation import write_groups_gif

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = data["frames"]
    groups = [frames[g * k : (g + 1) * k] for g in range(min(prompts, len(frames) // k))]
    write_groups_gif(groups, path, fps=fps)


def keep_if_best(progress: dict, rnd: int, judge: float | None, state: dict, folder: Path) -> None:
    """Rank 0: the adapters that sampled round `rnd` are kept as OUT/best_round/round_NNNN.safetensors when the judge
    likes this round best so far (the guard's fallback); `progress["best"]` names the round (a file of a round
    lost to a kill is never named, so a resumed run cannot pick it up)."""
    from safetensors.torch import save_file

    if judge is None:
        return
    best = progress.get("best")
    if best is None or judge > best["judge"]:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / f"round_{rnd:04d}.safetensors"))
        progress["best"] = {"round": rnd, "judge": judge}


def restore_best(transformer, folder: Path, rnd: int) -> bool:
    """Rank 0: round `rnd`'s adapters back into the policy (written as OUT/final); False when its file is not here."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    from raypipe.flow.lora import ADAPTER

    path = folder / f"round_{rnd:04d}.safetensors"
    if not path.exists():
        return False
    set_peft_model_state_dict(transformer, load_file(str(path)), adapter_name=ADAPTER)
    return True


def grpo_round(gen, engine, t, data, r, ok, uncond, generator, rank, world, per_round, real=None) -> dict:
    from raypipe.flow.grpo import gaussian_kl, group_advantages, grpo_loss, sde_mean_std, step_log_prob
    from raypipe.flow.lora import reference
    from raypipe.flow.online import deal, grpo_items, per_rank_items
    from raypipe.flow.sampler import time_grid
    from raypipe.flow.wan22 import trained_steps

    adv = torch.zeros(len(r))
    if ok.any():
        idx = np.flatnonzero(ok)
        adv[idx] = group_advantages(torch.tensor(r[idx]), torch.tensor(data["groups"][idx]))
    grid = time_grid(t.steps, gen.shift)
    items = grpo_items(ok, t.steps, t.train_fraction, generator, trained_steps(gen.transformer, grid[:-1]))
    mine = deal(items, rank, world, per_rank_items(len(items), world) * t.updates)
    t_cap = float(grid[1])
    states = torch.from_numpy(np.array(data["states"]))  # a copy: what ray.get gives is read-only
    old = torch.from_numpy(np.array(data["log_probs"]))
    text_cache: dict[str, torch.Tensor] = {}
    losses, kls, clipped, sfts, ratios = [], [], [], [], []
    for s in range(planned_steps(len(items), world, t, per_round)):
        batch = mine[s * t.batch : (s + 1) * t.batch]
        engine.train()
        if not batch:
            loss = zero_loss(engine.module)
        else:
            i_s, j_s = [b[0] for b in batch], [b[1] for b in batch]
            prompts = [data["prompts"][i] for i in i_s]
            for p in set(prompts) - set(text_cache):
                text_cache[p] = gen.encode_prompts([p])[0]
            text = torch.stack([text_cache[p] for p in prompts]).to(gen.device)
            x = states[i_s, j_s].to(gen.device)
            x_next = states[i_s, [j + 1 for j in j_s]].to(gen.device)
            tt, tn = grid[j_s], grid[[j + 1 for j in j_s]]
            v = policy_velocity(gen, engine, x, tt, text, uncond, t.cfg_scale)
            mean, std = sde_mean_std(x, v, tt, tn, t.noise_level, t_cap)
            log_p = step_log_prob(x_next, mean, std)
            with reference(engine.module):
                mean_ref, _ = sde_mean_std(
                    x, policy_velocity(gen, engine, x, tt, text, uncond, t.cfg_scale), tt, tn, t.noise_level, t_cap
                )
            kl = gaussian_kl(mean, mean_ref, std)
            loss, st = grpo_loss(log_p, old[i_s, j_s], adv[i_s], t.clip_range, kl, t.kl_beta, t.adv_clip)
            kls.append(st["kl"])
            clipped.append(st["clip_fraction"])
            ratios.append(st["ratio_mean"])
        update(gen, engine, t, loss, s, real, generator, losses, sfts)
    return {
        "loss": round(float(np.mean(losses)), 6) if losses else None,
        "kl": round(float(np.mean(kls)), 6) if kls else None,
        "clip_fraction": round(float(np.mean(clipped)), 4) if clipped else None,
        # mean ρ of the round's first step, before any update: 1 when the learner recomputes the rollout's exact
        # transitions (the behaviour policy is the learner's), off 1 by the policy's move when overlapped
        "ratio_first": round(float(ratios[0]), 6) if ratios else None,
        "trained_transitions": len(items),
        **({"sft_loss": round(float(np.mean(sfts)), 6)} if sfts else {}),
    }


def planned_steps(items: int, world: int, t, per_round: int) -> int:
    """The optimizer steps every rank takes this round: enough for a rank's share of `items` (`deal` gives every
    rank with a share exactly per_rank_items·updates of them), at most the `per_round` the learning-rate schedule was
    planned with; computed from the round's item count alone, so every rank agrees. Fewer items than planned
    (failed samples, Wan2.2 A14B's one trained expert) mean fewer steps, none when nothing can be trained on —
    not steps on empty batches that would still move the adapters through Adam's momentum."""
    from raypipe.flow.online import per_rank_items

    share = per_rank_items(items, world) * t.updates if items else 0
    return min(per_round, -(-share // t.batch))


def update(gen, engine, t, loss, step: int, real, generator, losses: list, sfts: list) -> None:
    """One optimizer step on `loss` (+ λ_sft · flow matching on real videos when `real`); a non-finite loss stops the
    round before anything is written (SPEC §7). Appends the step's loss (and SFT term) to the round's lists."""
    if not torch.isfinite(loss.detach()):
        raise FloatingPointError(f"non-finite loss {float(loss.detach())} at step {step} of the round: nothing written")
    if real is not None:  # plain flow matching on real videos in every update (λ_sft)
        sft = sft_term(gen, engine, real, t.batch, generator)
        sfts.append(float(sft.detach()))
        loss = loss + t.lambda_sft * sft
    engine.backward(loss)
    engine.step()
    losses.append(float(loss.detach()))


def policy_velocity(gen, engine, x, tt, text, uncond, cfg_scale):
    """The CFG velocity of the policy (engine) at (x, t) per sample (`flow.grpo.guided_velocity` with the engine)."""
    from raypipe.flow.grpo import guided_velocity

    return guided_velocity(
        lambda *a: gen.velocity(*a, model=engine), x, tt.to(x.device).float(), text, uncond, cfg_scale
    )


def dpo_round(gen, engine, t, data, r, ok, rank, world, per_round, generator, real=None) -> dict:
    from raypipe.flow.grpo import best_worst
    from raypipe.flow.online import deal, per_rank_items
    from raypipe.flow.training import algo_loss

    masked = np.where(ok, r, np.nan)
    pairs = best_worst(masked, data["groups"])
    mine = deal(pairs, rank, world, per_rank_items(len(pairs), world) * t.updates)
    latents = torch.from_numpy(np.array(data["latents"]))
    losses, accs, sfts = [], [], []
    for s in range(planned_steps(len(pairs), world, t, per_round)):
        batch = mine[s * t.batch : (s + 1) * t.batch]
        engine.train()
        if not batch:
            loss = zero_loss(engine.module)
        else:
            w, lo = [b[0] for b in batch], [b[1] for b in batch]
            tensors = {
                "z_w": latents[w],
                "z_l": latents[lo],
                "text": gen.encode_prompts([data["prompts"][i] for i in w]),
            }
            loss, st = algo_loss(gen, engine, t, tensors, generator)
            if "accuracy" in st:
                accs.append(st["accuracy"])
        update(gen, engine, t, loss, s, real, generator, losses, sfts)
    return {
        "loss": round(float(np.mean(losses)), 6) if losses else None,
        "pairs": len(pairs),
        **({"dpo_accuracy": round(float(np.mean(accs)), 4)} if accs else {}),
        **({"sft_loss": round(float(np.mean(sfts)), 6)} if sfts else {}),
    }


def policy_rounds_ago(folder: Path, state: dict, rnd: int, n: int) -> tuple[dict | None, bool]:
    """Rank 0, online DPO with train.ref_rounds = n: keeps round `rnd`'s starting adapters (`state`) in `folder` and
    returns (those of round rnd − n, missing): None before round n (round 0's adapters are the base, B = 0); files
    no later round needs are removed. A resumed run whose file is gone (another machine) gets None and
    missing=True: the base this round."""
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / f"round_{rnd:04d}.safetensors"))
    for old in folder.glob("round_*.safetensors"):
        if int(old.stem.split("_")[1]) < rnd - n:
            old.unlink(missing_ok=True)
    if rnd < n:
        return None, False
    path = folder / f"round_{rnd - n:04d}.safetensors"
    if not path.exists():
        return None, True
    return load_file(str(path)), False
