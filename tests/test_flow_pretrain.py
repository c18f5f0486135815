"""Pretraining pieces: the VAE fit lowers reconstruction error; latent stats normalise the latents; the oracle
report reads colour/shape/direction agreement."""

import numpy as np
import torch

from raypipe.flow.family import WanFamily
from raypipe.flow.pretrain import fit_vae, oracle_report, reconstruction_mse, set_latent_stats
from raypipe.flow.wan_build import TinyWanConfig, make_tiny_wan
from raypipe.video.synth import render_video


def _clips(n=4, frames=5, size=32):
    rng = np.random.default_rng(0)
    return np.stack(
        [
            render_video("red", "circle", "left", vq=1.0, mq=1.0, rng=rng, frames=frames, size=(size, size))
            for _ in range(n)
        ]
    )


def test_fit_vae_and_latent_stats(tmp_path):
    gen = WanFamily.load(make_tiny_wan(tmp_path / "wan", TinyWanConfig()))
    clips = _clips()
    before = reconstruction_mse(gen, clips)
    history = fit_vae(gen, clips, steps=20, batch=2, lr=1e-3, frame_steps=30, frame_batch=8, log_every=10)
    assert [h["phase"] for h in history] == ["frames"] * 3 + ["clips"] * 2
    assert reconstruction_mse(gen, clips) < 0.5 * before
    stats = set_latent_stats(gen, clips)
    z = gen.encode_videos(clips)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3, 4)), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 2, 3, 4)), torch.ones(4), atol=1e-3, rtol=0)
    assert len(stats["latents_std"]) == 4


def test_oracle_report_on_rendered_clips():
    clips = _clips(n=2, frames=16, size=56)
    report = oracle_report(clips, ["a red circle moving left", "a blue circle moving up"])
    assert report["n"] == 2 and report["color_right"] == 0.5 and report["direction_right"] == 0.5
    assert report["object_found"] == 1.0
