"""`raypipe eval-flow`: win rate of an aligned generator over its base, by the reward model and by the oracle.

    raypipe eval-flow --base gen-out/flow/final --lora dpo-out/final --reward reward-out/final --prompts 64 --out E

Identical prompts and initial noise for both models; each sample is written as an mp4 (OUT/videos/{base,aligned})
and scored by the reward checkpoint exactly as relabel would see it (decoded with the checkpoint's sampling).
Per dimension: win rate = share of prompts where aligned beats base (a tie counts ½), by the reward model and, on
the same samples, by the SynthPref oracle (the stand-in for human raters). A reward win the oracle does not
confirm is flagged as reward hacking. Also `grid.gif`: base | aligned side by side for the first prompts.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from raypipe.config import ConfigError, load_config, save_config


@dataclasses.dataclass
class FlowEvalConfig:
    base: str = ""  # a WanPipeline folder (the pretrained generator)
    lora: str = ""  # an adapter folder written by train-flow (OUT/final)
    reward: str = ""  # a VideoReward checkpoint
    prompts: str = "64"  # a number (seeded SynthPref prompts), a .txt (one per line) or a manifest with `prompt`
    out: str = "eval-flow-out"
    frames: int = 9
    height: int = 32
    width: int = 32
    steps: int = 20
    cfg_scale: float = 4.0
    seed: int = 0
    fps: float = 8.0
    grid: int = 8  # prompts shown in grid.gif
    hacking_margin: float = 0.05  # reward win rate above oracle win rate by more than this (on a win) = hacking


def read_prompts(spec: str, seed: int) -> list[str]:
    from raypipe.video.synth import COLORS, DIRECTIONS, SHAPES, make_prompt

    if spec.isdigit():
        rng = np.random.default_rng(seed)
        return [make_prompt(COLORS[rng.integers(len(COLORS))], SHAPES[rng.integers(len(SHAPES))],
                            DIRECTIONS[rng.integers(len(DIRECTIONS))]) for _ in range(int(spec))]
    path = Path(spec)
    if not path.exists():
        raise ConfigError(f"prompts: {spec!r} is neither a number nor an existing file")
    if path.suffix == ".txt":
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    from raypipe.data.manifest import read_table

    return [str(p) for p in read_table(str(path)).column("prompt").to_pylist()]


def win_rate(aligned: np.ndarray, base: np.ndarray) -> float:
    """Share of items where aligned > base, ties counting one half."""
    a, b = np.asarray(aligned, float), np.asarray(base, float)
    return float(np.mean((a > b) + 0.5 * (a == b)))


def write_grid_gif(base: np.ndarray, aligned: np.ndarray, path: Path, scale: int = 4, fps: float = 8.0) -> Path:
    """An animated GIF: one row per prompt, base on the left, aligned on the right."""
    from PIL import Image

    rows = [np.concatenate([b, np.full_like(b[:, :, :2], 255), a], axis=2) for b, a in zip(base, aligned)]
    video = np.concatenate(rows, axis=1)  # [T, H*n, 2W+2, 3]
    frames = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in video]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path


def score_samples(samples: dict[str, np.ndarray], prompts: list[str], reward_path: str, out: Path,
                  fps: float = 8.0) -> tuple[dict, dict, list[str]]:
    """Write each set of samples as mp4 (OUT/videos/<name>/NNNN.mp4), score them with the reward checkpoint
    exactly as relabel would see them (decoded with its sampling) and judge them with the oracle.
    Returns (scores {name: [N, D]}, oracle verdicts {name: [dict]}, reward dimensions)."""
    from raypipe.reward.model import VideoReward
    from raypipe.reward.scoring import resolve_sampling
    from raypipe.video.decode import VideoClip, decode_video
    from raypipe.video.encode import write_mp4
    from raypipe.video.oracle import judge

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
        scores[name] = np.concatenate([reward.score(frames_list[i:i + 16], prompts[i:i + 16]).numpy()
                                       for i in range(0, len(prompts), 16)])
        oracle[name] = [judge(v, p) for v, p in zip(videos, prompts)]
    return scores, oracle, list(reward.dimensions)


def compare(scores: dict, oracle: dict, dims: list[str], prompts: list[str], new: str, old: str,
            hacking_margin: float = 0.05) -> dict:
    """Win rates of `new` over `old` per dimension, by the reward model and by the oracle on the same samples;
    a reward win the oracle does not confirm (by more than `hacking_margin`) is listed as reward hacking."""
    report = {"prompts": len(prompts), "reward_win_rate": {}, "oracle_win_rate": {}, "reward_hacking": [],
              "mean_reward": {}, "oracle_mean": {}}
    for j, dim in enumerate(dims):
        report["reward_win_rate"][dim] = win_rate(scores[new][:, j], scores[old][:, j])
        report["mean_reward"][dim] = {n: float(scores[n][:, j].mean()) for n in (old, new)}
        if dim in ("VQ", "MQ", "TA"):
            o_new = np.array([v[dim] for v in oracle[new]])
            o_old = np.array([v[dim] for v in oracle[old]])
            report["oracle_win_rate"][dim] = win_rate(o_new, o_old)
            report["oracle_mean"][dim] = {old: float(o_old.mean()), new: float(o_new.mean())}
            r, o = report["reward_win_rate"][dim], report["oracle_win_rate"][dim]
            if r > 0.5 and r - o > hacking_margin:
                report["reward_hacking"].append(
                    f"{dim}: the reward model prefers the {new} samples ({r:.2f}) but the oracle does not ({o:.2f})")
    for name in (old, new):
        report[f"oracle_{name}_attributes"] = attribute_share(oracle[name], prompts)
    return report


def attribute_share(verdicts: list[dict], prompts: list[str]) -> dict[str, float]:
    """Share of samples whose oracle-seen colour / shape / direction is the one the SynthPref-style prompt
    (`a {color} {shape} moving {direction}`) names."""
    return {key: float(np.mean([v.get(key) == p.split()[pos] for v, p in zip(verdicts, prompts)]))
            for key, pos in (("color", 1), ("shape", 2), ("direction", 4))}


def run_eval_flow(cfg: FlowEvalConfig) -> dict:
    import torch

    from raypipe.flow.family import WanFamily
    from raypipe.flow.pretrain_job import sample_videos

    for name in ("base", "lora", "reward"):
        if not getattr(cfg, name):
            raise ConfigError(f"--{name} is required")
    prompts = read_prompts(cfg.prompts, cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    samples = {}
    for name in ("base", "aligned"):
        gen = WanFamily.load(cfg.base)
        if name == "aligned":
            gen.pipeline.load_lora_weights(cfg.lora)
        shape = (int(gen.pipeline.vae.config.z_dim), 1 + (cfg.frames - 1) // gen.temporal,
                 cfg.height // gen.spatial, cfg.width // gen.spatial)
        torch.manual_seed(cfg.seed)
        samples[name] = sample_videos(gen, prompts, shape, cfg.steps, cfg.cfg_scale, cfg.seed)  # same noise
    scores, oracle, dims = score_samples(samples, prompts, cfg.reward, out, cfg.fps)
    report = compare(scores, oracle, dims, prompts, "aligned", "base", cfg.hacking_margin)
    n = min(cfg.grid, len(prompts))
    write_grid_gif(samples["base"][:n], samples["aligned"][:n], out / "grid.gif")
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("reward_win_rate", "oracle_win_rate", "reward_hacking")}, indent=2))
    return report


def eval_flow_from_args(base, lora, reward, prompts, out, config_path, overrides) -> int:
    pairs = (("base", base), ("lora", lora), ("reward", reward), ("prompts", prompts), ("out", out))
    extra = [f"{k}={json.dumps(v)}" for k, v in pairs if v is not None]
    run_eval_flow(load_config(FlowEvalConfig, config_path, list(overrides or []) + extra))
    return 0
