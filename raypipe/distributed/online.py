"""Online alignment's rollout side on Ray (SPEC §9): rollout actors that hold the generator with the current LoRA
and sample from it, the weight sync between the learner and the rollout pool, and rank 0's round collector.

    rollout = [RolloutActor.options(num_cpus=0.5).remote(generator, lora, dtype, clip) for _ in range(2)]
    score = actor_scorer(reward_actors)          # distributed/online_reward.py, or serve.pool's Serve scorer
    collect = round_collector(rollout, score, prompts, per_round, k, seed, sampling, oracle, judge, weights)
    data = collect(rnd, version, lora_state(engine.module))   # rollout -> reward, the adapters via the object store

Weights travel as one object-store object per round (no files); every sample carries the policy `version` it was
drawn with, and every actor reports the hash of the adapters it sampled with (`lora_hash`), so a test (or a
suspicious user) can check that the pool samples with the learner's weights. A reward that fails for a sample is
an error on that sample (`error`), never a default score: the learner does not train on it.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

import numpy as np
import ray
import torch

from raypipe.flow.lora import ADAPTER


def lora_state(transformer) -> dict[str, torch.Tensor]:
    """The adapters' weights as CPU tensors (what travels to the rollout actors)."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(transformer, adapter_name=ADAPTER)
    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in state.items()}


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted names and float32 bytes of a LoRA state (the same weights give the same hash)."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class SamplingSettings:
    """How a round samples (the learner recomputes GRPO transitions with the same grid)."""

    steps: int
    cfg_scale: float
    shift: float
    noise_level: float  # a: the SDE's noise (0: the ODE)
    keep_states: bool  # GRPO: keep every state and transition log-probability


@ray.remote
class RolloutActor:
    """The generator (with LoRA adapters) on this actor's device; `rollout` sets the weights it is given and samples."""

    def __init__(
        self,
        generator: str,
        lora: dict,
        dtype: str,
        clip: dict,
        num_gpus: float = 0.0,
        latent_rewards: dict[str, str] | None = None,
    ):
        from raypipe.distributed.cluster import quiet_logs
        from raypipe.flow.families import load_family
        from raypipe.flow.lora import add_lora
        from raypipe.nrg.model import LatentReward

        quiet_logs()
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.gen = load_family(generator, dtype=dtype, device="cuda" if num_gpus > 0 else "cpu")
        experts = lora.get("experts", "both")
        add_lora(self.gen.transformer, lora["r"], lora["alpha"], 0.0, self.gen.lora_targets, experts)
        self.gen.transformer.eval()
        frames = self.gen.frames_for(clip["frames"])
        self.latent_shape = self.gen.latent_shape(frames, clip["height"], clip["width"])
        self.version, self.hash = None, None
        # latent rewards score the clean latents here, where they and the prompt embeddings already are
        device = str(self.gen.device)
        self.latent_rewards = [
            LatentReward.from_pretrained(p, dtype, device, generator=self.gen) for p in (latent_rewards or {}).values()
        ]

    def set_weights(self, version: int, state: dict) -> str:
        from peft.utils import set_peft_model_state_dict

        set_peft_model_state_dict(self.gen.transformer, state, adapter_name=ADAPTER)
        self.version, self.hash = version, state_hash(lora_state(self.gen.transformer))
        return self.hash

    def rollout(self, version: int, state, prompts: list[str], seeds: list[int], sampling: SamplingSettings) -> dict:
        """One sample per (prompt, seed) with the adapters of `version` (set from `state` when not already)."""
        from raypipe.flow.grpo import sample_sde
        from raypipe.flow.sampler import sample

        if self.version != version:
            self.set_weights(version, state)
        t0 = time.perf_counter()
        text = self.gen.encode_prompts(prompts)
        uncond = self.gen.encode_prompts([""])
        noise = torch.stack([torch.randn(self.latent_shape, generator=_seeded(s)) for s in seeds])
        noise = noise.to(self.gen.device)
        if sampling.keep_states:  # GRPO: the SDE, every state and transition log-probability kept
            steps_gen = _seeded(int(seeds[0]) * 7919 + 17)
            out = sample_sde(
                self.gen.velocity,
                text,
                uncond,
                noise,
                sampling.steps,
                sampling.noise_level,
                cfg_scale=sampling.cfg_scale,
                shift=sampling.shift,
                generator=steps_gen,
            )
            latents = out.latents
        else:  # online DPO: the ODE sampler of offline sampling
            out = None
            latents = sample(
                self.gen.velocity,
                text,
                uncond,
                noise.shape,
                steps=sampling.steps,
                cfg_scale=sampling.cfg_scale,
                shift=sampling.shift,
                noise=noise,
            )
        frames = self.gen.decode_latents(latents)
        result = {
            "latents": latents.cpu().numpy(),
            **latent_scores(self.latent_rewards, latents, text),
            "frames": frames,
            "version": version,
            "lora_hash": self.hash,
            "seconds": time.perf_counter() - t0,
        }
        if sampling.keep_states:
            result["states"] = out.states.cpu().numpy()
            result["log_probs"] = out.log_probs.cpu().numpy()
        return result


def latent_scores(models: list, latents: torch.Tensor, text: torch.Tensor) -> dict:
    """{"latent_scores": [N, ΣD]}: each latent reward's scores of the clean latents (t = 0), side by side in order
    (nothing without latent rewards)."""
    if not models:
        return {}
    t = torch.zeros(latents.shape[0], device=latents.device)
    with torch.no_grad():
        scores = [m(latents, t, text).double().cpu().numpy() for m in models]
    return {"latent_scores": np.concatenate(scores, axis=1)}


def with_latent_scores(scored: dict, latent: np.ndarray) -> dict:
    """The scorer's result with the latent rewards' columns appended; a sample whose latent score is not finite gets
    that error (unless it already has one)."""
    errors = list(scored["errors"])
    for i in np.flatnonzero(~np.isfinite(latent).all(axis=1)):
        errors[i] = errors[i] or "non_finite: a latent reward returned a non-finite score"
    scores = np.concatenate([np.asarray(scored["scores"], dtype=np.float64), latent], axis=1)
    return {**scored, "scores": scores, "errors": errors}


def _seeded(seed: int) -> torch.Generator:
    """A CPU generator from any integer seed (folded into torch's 64-bit range)."""
    return torch.Generator().manual_seed(int(seed) % (2**63 - 1))


def collect_round(
    rollout: list,
    score,
    state_ref,
    version: int,
    prompts: list[str],
    k: int,
    seeds: list[int],
    sampling: SamplingSettings,
    oracle: bool = False,
) -> dict:
    """K samples per prompt from the rollout pool (prompts split over the actors), then `score(frames, prompts,
    oracle)` (`actor_scorer`, or the Serve pool of `raypipe.serve.pool`). Returns numpy arrays over the P·K samples
    (sample i = prompt i // k): latents, frames, (states, log_probs), scores [N, D], errors, oracle verdicts, group
    ids, versions, the actors' adapter hashes and the time split."""
    n = len(prompts) * k
    sample_prompts = [p for p in prompts for _ in range(k)]
    groups = np.repeat(np.arange(len(prompts)), k)
    chunks = [idx for idx in np.array_split(np.arange(n), len(rollout)) if len(idx)]
    t0 = time.perf_counter()
    parts = call_all(
        [
            (actor.rollout, (version, state_ref, [sample_prompts[i] for i in idx], [seeds[i] for i in idx], sampling))
            for actor, idx in zip(rollout, chunks)
        ]
    )
    rollout_s = time.perf_counter() - t0
    merged = {key: np.concatenate([p[key] for p in parts]) for key in parts[0] if isinstance(parts[0][key], np.ndarray)}
    t1 = time.perf_counter()
    scored = score(merged["frames"], sample_prompts, oracle)
    if "latent_scores" in merged:  # latent rewards, scored by the rollout actors: their columns come last
        scored = with_latent_scores(scored, merged.pop("latent_scores"))
    reward_s = time.perf_counter() - t1
    return {
        **merged,
        "prompts": sample_prompts,
        "groups": groups,
        "versions": np.concatenate([[p["version"]] * len(idx) for p, idx in zip(parts, chunks)]),
        "lora_hashes": sorted({p["lora_hash"] for p in parts}),
        "scores": scored["scores"],
        "errors": scored["errors"],
        "oracle": scored["oracle"] or [],
        "seconds": {"rollout": rollout_s, "reward": reward_s},
    }


def round_collector(
    rollout: list,
    score,
    prompt_list: list[str],
    per_round: int,
    k: int,
    seed: int,
    sampling: SamplingSettings,
    oracle: bool,
    judge,
    judge_weights: dict,
):
    """Rank 0's `collect(round, version, state)`: the round's prompts and seeds (a function of seed and round),
    K samples each from the rollout pool with the adapters `state` (policy version `version`), scored, with the
    guard's `judge` value — None (off), "oracle" (SynthPref prompts) or a RewardActor holding a held-out checkpoint,
    each Σ judge_weights — and the state's hash. The state is returned with the round (the guard keeps the best)."""
    from raypipe.flow.online import judge_value, round_prompts, weighted_rewards

    def judged(data: dict):
        if judge is None:
            return None
        if judge == "oracle":
            return judge_value(data["oracle"], judge_weights)
        scored = ray.get(judge.score.remote(data["frames"], data["prompts"], False))
        r, ok = weighted_rewards(scored["scores"], scored["errors"], ray.get(judge.dims.remote()), judge_weights)
        return round(float(r[ok].mean()), 5) if ok.any() else None

    def collect(rnd: int, version: int, state: dict) -> dict:
        prompts, seeds = round_prompts(prompt_list, per_round, k, seed, rnd)
        data = collect_round(rollout, score, ray.put(state), version, prompts, k, seeds, sampling, oracle)
        data.update(learner_hash=state_hash(state), round_prompts=prompts, state=state)
        data["judge"] = judged(data)
        return data

    return collect


def call_all(calls: list, tries: int = 3) -> list:
    """ray.get of every (actor method, args) call; a call whose actor died is sent again to the same handle, which
    Ray restarts (`max_restarts`): a killed rollout or reward actor is replaced, its share redone, nothing lost.
    The same seeds and weights go with the retry, so the redone samples are the ones the dead actor would have
    made."""
    results: list = [None] * len(calls)
    pending = list(range(len(calls)))
    for attempt in range(tries):
        futures = {i: calls[i][0].remote(*calls[i][1]) for i in pending}
        failed = []
        for i, future in futures.items():
            try:
                results[i] = ray.get(future)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                if attempt == tries - 1:
                    raise
                failed.append(i)
        if not failed:
            break
        pending = failed
    return results
