"""Judging generator samples, without Ray: the reward model and the SynthPref oracle on the same samples, win
rates of one set over another per dimension, reward hacking flagged, and a side-by-side GIF."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raypipe.reward.model import VideoReward
from raypipe.reward.scoring import resolve_sampling
from raypipe.video.decode import VideoClip, decode_video
from raypipe.video.encode import write_mp4
from raypipe.video.oracle import judge


def win_outcomes(aligned: np.ndarray, base: np.ndarray) -> list[float]:
    """Per item: 1 where aligned > base, ½ on a tie, 0 below (what a bootstrap over prompts resamples)."""
    a, b = np.asarray(aligned, float), np.asarray(base, float)
    return ((a > b) + 0.5 * (a == b)).astype(float).tolist()


def win_rate(aligned: np.ndarray, base: np.ndarray) -> float:
    """Share of items where aligned > base, ties counting one half."""
    return float(np.mean(win_outcomes(aligned, base)))


def write_grid_gif(base: np.ndarray, aligned: np.ndarray, path: Path, scale: int = 4, fps: float = 8.0) -> Path:
    """An animated GIF: one row per prompt, base on the left, aligned on the right."""
    from PIL import Image

    rows = [np.concatenate([b, np.full_like(b[:, :, :2], 255), a], axis=2) for b, a in zip(base, aligned)]
    video = np.concatenate(rows, axis=1)  # [T, H*n, 2W+2, 3]
    frames = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in video]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path


def write_groups_gif(groups: list[np.ndarray], path: Path, scale: int = 4, fps: float = 8.0) -> Path:
    """An animated GIF: one row per prompt, its samples side by side (each group uint8 [K, T, H, W, 3])."""
    from PIL import Image

    def row(videos):
        gap = np.full_like(videos[0][:, :, :2], 255)
        parts = [x for v in videos for x in (v, gap)][:-1]
        return np.concatenate(parts, axis=2)

    video = np.concatenate([row(list(g)) for g in groups], axis=1)
    frames = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in video]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path


def score_samples(
    samples: dict[str, np.ndarray], prompts: list[str], reward_path: str, out: Path, fps: float = 8.0
) -> tuple[dict, dict, list[str]]:
    """Write each set of samples as mp4 (OUT/videos/<name>/NNNN.mp4), score them with the reward checkpoint
    exactly as relabel would see them (decoded with its sampling) and judge them with the oracle.
    Returns (scores {name: [N, D]}, oracle verdicts {name: [dict]}, reward dimensions)."""
    reward = VideoReward.from_pretrained(reward_path)
    sampling, _ = resolve_sampling(reward_path, None)
    scores, oracle = {}, {}
    for name, videos in samples.items():
        folder = out / "videos" / name
        folder.mkdir(parents=True, exist_ok=True)
        frames_list = []
        for i, video in enumerate(videos):
            path = folder / f"{i:04d}.mp4"
            write_mp4(video, path, fps)
            clip = decode_video(str(path), sampling)
            if not isinstance(clip, VideoClip):
                raise RuntimeError(f"a generated sample could not be read back: {clip}")
            frames_list.append(clip.frames)
        scores[name] = np.concatenate(
            [reward.score(frames_list[i : i + 16], prompts[i : i + 16]).numpy() for i in range(0, len(prompts), 16)]
        )
        oracle[name] = [judge(v, p) for v, p in zip(videos, prompts)]
    return scores, oracle, list(reward.dimensions)


def compare(
    scores: dict, oracle: dict, dims: list[str], prompts: list[str], new: str, old: str, hacking_margin: float = 0.05
) -> dict:
    """Win rates of `new` over `old` per dimension, by the reward model and by the oracle on the same samples;
    a reward win the oracle does not confirm (by more than `hacking_margin`) is listed as reward hacking.
    `outcomes` keeps the per-prompt results (1 / ½ / 0, prompt order) for intervals over prompts and seeds."""
    report = {
        "prompts": len(prompts),
        "reward_win_rate": {},
        "oracle_win_rate": {},
        "reward_hacking": [],
        "mean_reward": {},
        "oracle_mean": {},
        "outcomes": {"reward": {}, "oracle": {}},
    }
    for j, dim in enumerate(dims):
        report["outcomes"]["reward"][dim] = win_outcomes(scores[new][:, j], scores[old][:, j])
        report["reward_win_rate"][dim] = win_rate(scores[new][:, j], scores[old][:, j])
        report["mean_reward"][dim] = {n: float(scores[n][:, j].mean()) for n in (old, new)}
        if dim in ("VQ", "MQ", "TA"):
            o_new = np.array([v[dim] for v in oracle[new]])
            o_old = np.array([v[dim] for v in oracle[old]])
            report["outcomes"]["oracle"][dim] = win_outcomes(o_new, o_old)
            report["oracle_win_rate"][dim] = win_rate(o_new, o_old)
            report["oracle_mean"][dim] = {old: float(o_old.mean()), new: float(o_new.mean())}
            r, o = report["reward_win_rate"][dim], report["oracle_win_rate"][dim]
            if r > 0.5 and r - o > hacking_margin:
                report["reward_hacking"].append(
                    f"{dim}: the reward model prefers the {new} samples ({r:.2f}) but the oracle does not ({o:.2f})"
                )
    for name in (old, new):
        report[f"oracle_{name}_attributes"] = attribute_share(oracle[name], prompts)
    return report


def attribute_share(verdicts: list[dict], prompts: list[str]) -> dict[str, float]:
    """Share of samples whose oracle-seen colour / shape / direction is the one the SynthPref-style prompt
    (`a {color} {shape} moving {direction}`) names."""
    return {
        key: float(np.mean([v.get(key) == p.split()[pos] for v, p in zip(verdicts, prompts)]))
        for key, pos in (("color", 1), ("shape", 2), ("direction", 4))
    }
