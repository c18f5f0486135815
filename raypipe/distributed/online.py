"""Online alignment's Ray actors (SPEC §9): rollout actors that hold the generator with the current LoRA and sample
from it, reward actors that score those samples, and the weight sync between the learner and the rollout pool.

    rollout = [RolloutActor.options(num_cpus=0.5).remote(generator, lora, dtype, clip) for _ in range(2)]
    rewards = [RewardActor.options(num_cpus=0.5).remote(reward, weights) for _ in range(1)]
    state = ray.put(lora_state(engine.module))                  # the learner's adapters, once, in the object store
    batch = collect_round(rollout, rewards, state, version, prompts, k, seed, sampling)   # rollout -> reward

Weights travel as one object-store object per round (no files); every sample carries the policy `version` it was
drawn with, and every actor reports the hash of the adapters it sampled with (`lora_hash`), so a test (or a
suspicious user) can check that the pool samples with the learner's weights. A reward that fails for a sample is
an error on that sample (`error`), never a default score: the learner does not train on it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
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


@ray.remote
class RewardActor:
    """A VideoReward checkpoint scoring videos exactly as relabel sees them (written as mp4 at `fps`, decoded with
    the checkpoint's sampling), plus the SynthPref oracle's verdict when asked."""

    def __init__(
        self, reward: str, base: str | None = None, template_file: str | None = None, fps: float = 8.0, batch: int = 8
    ):
        from raypipe.distributed.cluster import quiet_logs
        from raypipe.reward.model import VideoReward
        from raypipe.reward.scoring import resolve_sampling, reward_options

        quiet_logs()
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.model = VideoReward.from_pretrained(reward, **reward_options(reward, base, template_file))
        self.sampling, _ = resolve_sampling(reward, None)
        self.dimensions = list(self.model.dimensions)
        self.fps = fps
        self.batch = max(1, int(batch))

    def dims(self) -> list[str]:
        return self.dimensions

    def score(self, frames: np.ndarray, prompts: list[str], oracle: bool) -> dict:
        """{"scores": [N, D] (NaN rows on error), "errors": [None | "kind: message"], "oracle": [dict] | None}."""

        def fill(clips, part, scores, errors):  # one forward pass of at most `batch` videos
            with torch.no_grad():
                got = self.model.score(clips, [prompts[i] for i in part]).float().numpy()
            fill_scores(scores, errors, part, got)

        return scored_in_batches(self, frames, prompts, oracle, fill)


@ray.remote
class CriticActor:
    """A LiFT critic scoring samples as relabel --critic sees them: per dimension its answer's rating mapped to a
    weight (SPEC §8: Good 0.9, Normal 0.2, Bad 0.05 unless `weight_map`); an answer that does not start with a
    rating is that sample's error (never a silent Good)."""

    def __init__(self, critic: str, fps: float = 8.0, batch: int = 8, weight_map: dict | None = None, seed: int = 0):
        from raypipe.critic.model import Critic
        from raypipe.data.ratings import DEFAULT_WEIGHT_MAP, check_weight_map
        from raypipe.distributed.cluster import quiet_logs
        from raypipe.reward.scoring import resolve_sampling

        quiet_logs()
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.model = Critic.from_pretrained(critic)
        self.sampling, _ = resolve_sampling(critic, None)
        self.dimensions = list(self.model.dimensions)
        self.weights = check_weight_map(weight_map or DEFAULT_WEIGHT_MAP)
        self.fps, self.batch = fps, max(1, int(batch))
        self.generator = torch.Generator().manual_seed(seed)

    def dims(self) -> list[str]:
        return self.dimensions

    def score(self, frames: np.ndarray, prompts: list[str], oracle: bool) -> dict:
        """As RewardActor.score: [N, D] rating weights (NaN rows on error), errors, oracle verdicts."""
        from raypipe.data.ratings import AnswerError, parse_rating

        def fill(clips, part, scores, errors):  # one generation per dimension for at most `batch` videos
            for j, dim in enumerate(self.dimensions):
                answers = self.model.answer(clips, [prompts[i] for i in part], [dim] * len(part), self.generator)
                for i, text in zip(part, answers):
                    try:
                        scores[i, j] = self.weights[parse_rating(text)]
                    except AnswerError as e:
                        errors[i] = errors[i] or f"{AnswerError.kind}: {dim}: {e}"

        out = scored_in_batches(self, frames, prompts, oracle, fill)
        out["scores"][[e is not None for e in out["errors"]]] = np.nan
        return out


def scored_in_batches(actor, frames: np.ndarray, prompts: list[str], oracle: bool, fill) -> dict:
    """A reward or critic actor's `score`: the samples as relabel sees them (`reward_inputs` with the actor's
    sampling and fps), then `fill(clips, rows, scores, errors)` over batches of at most `actor.batch` decodable
    samples. {"scores": [N, D] (NaN where not filled), "errors", "oracle", "seconds"}."""
    t0 = time.perf_counter()
    prepared = reward_inputs(frames, prompts, actor.sampling, actor.fps, oracle)
    scores = np.full((len(prompts), len(actor.dimensions)), np.nan)
    errors = list(prepared["errors"])
    keep = [i for i, c in enumerate(prepared["clips"]) if c is not None]
    for start in range(0, len(keep), actor.batch):
        part = keep[start : start + actor.batch]
        fill([prepared["clips"][i] for i in part], part, scores, errors)
    return {"scores": scores, "errors": errors, "oracle": prepared["oracle"], "seconds": time.perf_counter() - t0}


def reward_inputs(frames: np.ndarray, prompts: list[str], sampling, fps: float, oracle: bool) -> dict:
    """What a reward model sees of each sample, exactly as relabel would: written as mp4 at `fps`, decoded with the
    checkpoint's `sampling`. {"clips": [frames | None], "errors": [None | "kind: message"], "oracle": [dict] | None}
    (the SynthPref oracle's verdict on the raw samples when `oracle`)."""
    from raypipe.video.decode import VideoClip, decode_video
    from raypipe.video.encode import write_mp4
    from raypipe.video.oracle import judge

    clips: list = [None] * len(prompts)
    errors: list[str | None] = [None] * len(prompts)
    with tempfile.TemporaryDirectory() as d:
        for i, video in enumerate(frames):
            path = os.path.join(d, f"{i:05d}.mp4")
            try:
                write_mp4(video, path, fps)
                clip = decode_video(path, sampling)
            except Exception as e:  # noqa: BLE001 - one sample's failure is its error, not the round's
                errors[i] = f"encode: {type(e).__name__}: {e}"
                continue
            if isinstance(clip, VideoClip):
                clips[i] = clip.frames
            else:
                errors[i] = f"{clip.kind}: {clip.message}"
    verdicts = [judge(v, p) for v, p in zip(frames, prompts)] if oracle else None  # SynthPref prompts only
    return {"clips": clips, "errors": errors, "oracle": verdicts}


@ray.remote(num_cpus=0.5)
def reward_inputs_task(frames, prompts, sampling, fps, oracle) -> dict:
    return reward_inputs(frames, prompts, sampling, fps, oracle)


def fill_scores(scores: np.ndarray, errors: list, keep: list[int], got) -> None:
    """Scores of the samples in `keep` into their rows; a non-finite score is that sample's error."""
    for j, i in enumerate(keep):
        row = np.asarray(got[j], dtype=np.float64)
        if np.isfinite(row).all():
            scores[i] = row
        elif errors[i] is None:
            errors[i] = "non_finite: the reward model returned a non-finite score"


def actor_scorer(rewards: list):
    """`score(frames, prompts, oracle)` over a pool of RewardActors (samples split over them; a dead actor's share
    redone)."""

    def score(frames: np.ndarray, prompts: list[str], oracle: bool) -> dict:
        chunks = [idx for idx in np.array_split(np.arange(len(prompts)), len(rewards)) if len(idx)]
        parts = _call_all(
            [(actor.score, (frames[idx], [prompts[i] for i in idx], oracle)) for actor, idx in zip(rewards, chunks)]
        )
        return {
            "scores": np.concatenate([p["scores"] for p in parts]),
            "errors": [e for p in parts for e in p["errors"]],
            "oracle": [v for p in parts for v in (p["oracle"] or [])],
        }

    return score


def combined_scorer(scorers: list):
    """`score(frames, prompts, oracle)` of several rewards side by side: their score columns concatenated in order
    (the training reward's first), a sample's error the first any reward gave, the oracle asked once."""

    def score(frames: np.ndarray, prompts: list[str], oracle: bool) -> dict:
        parts = [one(frames, prompts, oracle and i == 0) for i, one in enumerate(scorers)]
        errors = [
            next((p["errors"][i] for p in parts if p["errors"][i] is not None), None) for i in range(len(prompts))
        ]
        return {
            "scores": np.concatenate([np.asarray(p["scores"], dtype=np.float64) for p in parts], axis=1),
            "errors": errors,
            "oracle": parts[0]["oracle"],
        }

    return score


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
    parts = _call_all(
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


def _call_all(calls: list, tries: int = 3) -> list:
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
