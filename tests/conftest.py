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
# Ray Train's controller polls its workers every 2 s by default, so every tiny training run ends up to 2 s after its
# last step; the suite starts some 30 of them (the subprocess drivers and test clusters inherit this)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Object storage in tests is a real S3-protocol server on loopback (moto, the `s3` fixture), reached through the
# ordinary AWS variables, set here before any Ray worker starts so that decode tasks see them too. Never real S3.
S3_PORT = _free_port()
os.environ.update(
    AWS_ENDPOINT_URL=f"http://127.0.0.1:{S3_PORT}",
    AWS_ACCESS_KEY_ID="raypipe-test",
    AWS_SECRET_ACCESS_KEY="raypipe-test",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
)
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SHARED_CREDENTIALS_FILE"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def s3():
    """A real S3-protocol endpoint (moto's standalone server) on 127.0.0.1 with the bucket `raypipe-test`;
    yields a function that makes a fresh `s3://raypipe-test/<name>-<n>` prefix per use."""
    import itertools
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    boto3.client("s3").create_bucket(Bucket="raypipe-test")
    counter = itertools.count()
    yield lambda name="t": f"s3://raypipe-test/{name}-{next(counter)}"
    server.stop()


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


CRITIC_ANSWERS = {
    "VQ": "Good. The video is sharp and clean.",
    "MQ": "Bad. The motion jitters and stutters.",
    "TA": "Normal. It is a square, not a circle.",
}


@pytest.fixture(scope="session")
def critic_checkpoint(tmp_path_factory):
    """A tiny saved critic fitted (in-process, 100 steps) to give CRITIC_ANSWERS whatever the video, with the tiny
    sampling recorded beside it: a critic whose answers a test can predict."""
    import json

    import torch

    from raypipe.critic.model import Critic, CriticModelConfig
    from raypipe.critic.processor import unknown_words
    from raypipe.reward.backbone import load_backbone
    from raypipe.reward.scoring import SAMPLING_FILE

    _, tok = load_backbone("assets/tiny-qwen2vl")
    cfg = CriticModelConfig(name_or_path="assets/tiny-qwen2vl", train_language_model=True, max_new_tokens=16)
    cfg.added_words = unknown_words(tok, [*cfg.questions.values(), *CRITIC_ANSWERS.values()])
    torch.manual_seed(0)
    critic = Critic.build(cfg)
    opt = torch.optim.AdamW([p for p in critic.parameters() if p.requires_grad], lr=2e-3)
    rng = np.random.default_rng(0)
    dims = list(CRITIC_ANSWERS)
    from raypipe.video import synth

    def clip():  # SynthPref-like clips (what the tests score) and noise
        if rng.random() < 0.3:
            return rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8)
        attrs = (rng.choice(synth.COLORS), rng.choice(synth.SHAPES), rng.choice(synth.DIRECTIONS))
        return synth.render_video(*attrs, vq=rng.random(), mq=rng.random(), rng=rng)[::2]

    for _ in range(100):
        frames = [clip() for _ in range(6)]
        answers = list(CRITIC_ANSWERS.values()) * 2
        batch = critic.processor.train_batch(frames, ["a red circle moving left"] * 6, dims * 2, answers)
        critic(batch).backward()
        opt.step()
        opt.zero_grad()
    path = tmp_path_factory.mktemp("critic") / "final"
    critic.save_pretrained(path)
    (path / SAMPLING_FILE).write_text(json.dumps(TINY_SAMPLING_FIELDS))
    return str(path)
