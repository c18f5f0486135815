"""Shared fixtures: one local Ray for the whole session, small video writers."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs) shared by every test that needs a cluster."""
    import ray

    from raypipe.distributed.cluster import configure_data_context

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    configure_data_context(progress=False)
    yield ray
    ray.shutdown()


def moving_square_frames(t: int = 16, h: int = 56, w: int = 56, seed: int = 0) -> np.ndarray:
    """A bright square moving right over a dark, slightly noisy background: uint8 [T, H, W, 3]."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 20, (t, h, w, 3), dtype=np.uint8)
    for i in range(t):
        x = (2 * i) % max(1, w - 12)
        frames[i, h // 3 : h // 3 + 12, x : x + 12] = (230, 40, 40)
    return frames


@pytest.fixture
def make_mp4(tmp_path):
    """make_mp4(name, t=16, h=56, w=56, fps=8) -> path of a real H.264 file."""
    from raypipe.video.encode import write_mp4

    def _make(name: str = "clip.mp4", t: int = 16, h: int = 56, w: int = 56, fps: float = 8.0, seed: int = 0):
        path = tmp_path / name
        write_mp4(moving_square_frames(t, h, w, seed), path, fps)
        return str(path)

    return _make


TINY_SAMPLING_FIELDS = {"fps": 4.0, "max_frames": 16}  # the tiny presets' sampling (8 of 16 SynthPref frames)


@pytest.fixture(scope="session")
def reward_checkpoint(tmp_path_factory):
    """A tiny saved (untrained, seed 0) VideoReward with norm stats and the tiny sampling recorded beside it."""
    import torch

    from raypipe.reward.model import RewardModelConfig, VideoReward
    from raypipe.reward.scoring import SAMPLING_FILE

    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = VideoReward.build(RewardModelConfig(), tiny_dir=root / "backbone")
    stats = {"mean": {"VQ": 0.1, "MQ": -0.2, "TA": 0.3}, "std": {"VQ": 0.5, "MQ": 2.0, "TA": 1.5}}
    return str(model.save_pretrained(root / "final", norm_stats=stats, extra={SAMPLING_FILE: TINY_SAMPLING_FIELDS}))


def train_worker_pids() -> list[int]:
    """Ray names its worker processes after the actor they host ("ray::RayTrainWorker...")."""
    import psutil

    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if cmd.startswith("ray::RayTrainWorker"):
            pids.append(proc.info["pid"])
    return sorted(pids)


def kill_a_train_worker_after_first_checkpoint(run_dir: Path, killed: list, timeout_s: float = 300) -> None:
    """SIGKILL one Ray Train worker once the run (its storage folder) has a registered checkpoint."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and not killed:
        # The controller writes its snapshot once a reported checkpoint is registered (a checkpoint folder
        # alone may still be uploading, and a restart would then find no checkpoint).
        if (run_dir / "checkpoint_manager_snapshot.json").exists():
            pids = train_worker_pids()
            if pids:
                os.kill(pids[-1], signal.SIGKILL)
                killed.append(pids[-1])
                return
        time.sleep(0.2)
