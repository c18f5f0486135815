"""Online training's reward side on Ray actors (SPEC §9): VideoReward and LiFT-critic actors that score a round's
samples exactly as relabel would see them, and the scorers rank 0 calls — over a pool of such actors
(`actor_scorer`), or several rewards side by side (`combined_scorer`). `raypipe.serve.pool` has the Serve-pool
scorer with the same `score(frames, prompts, oracle)` shape and starts every pool of a run (`RewardPools`).

A sample that cannot be written, decoded or scored is an error on that sample (`errors[i]`, "kind: message"), its
score row NaN: never a default score.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import ray
import torch

from raypipe.distributed.online import call_all


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
        parts = call_all(
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
