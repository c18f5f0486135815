"""Caption pretraining of the tiny reward backbone: the clips match their captions, the LM labels cover the caption
only, the attribute accuracy reads the right positions, and a few steps (or a continued run) write a checkpoint
VideoReward loads."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import torch

from raypipe.recipes.pretrain_reward_backbone import CaptionPretrainConfig, pretrain_captioner
from raypipe.reward.backbone import IM_END, build_tiny_tokenizer, load_backbone, make_tiny_backbone
from raypipe.reward.captioning import attribute_accuracy, caption_batch, render_caption_sample
from raypipe.reward.model import RewardModelConfig, VideoReward
from raypipe.video import oracle, synth


def test_rendered_clips_show_their_caption():
    """The oracle (an independent reading of the pixels) sees the attributes the caption names."""
    rng = np.random.default_rng(5)
    seen = []
    for _ in range(12):
        frames, caption, attrs = render_caption_sample(rng, pixels=112)
        assert frames.shape == (8, 112, 112, 3) and frames.dtype == np.uint8
        assert caption == synth.make_prompt(*attrs)
        judged = oracle.judge(frames, caption)
        seen.append([judged["color"] == attrs[0], judged["shape"] == attrs[1], judged["direction"] == attrs[2]])
    agreement = np.mean(seen, axis=0)
    assert agreement[0] == 1.0 and agreement[1] >= 0.75 and agreement[2] >= 0.75, agreement


def test_caption_batch_labels_only_the_caption():
    tok = build_tiny_tokenizer()
    frames = np.zeros((8, 56, 56, 3), np.uint8)  # grid (4, 4, 4) -> 4·4·4/4 = 16 video tokens
    batch = caption_batch([(frames, "a red circle"), (frames, "a blue square moving up")], tok)
    prefix = 1 + len(tok.encode("user", add_special_tokens=False)) + 1 + 16 + 1
    end = tok.convert_tokens_to_ids(IM_END)
    short = tok.encode("a red circle", add_special_tokens=False) + [end]
    long = tok.encode("a blue square moving up", add_special_tokens=False) + [end]
    assert len(short) == 4 and len(long) == 6  # word-level: one token per word
    assert batch["input_ids"].shape == (2, prefix + 6)
    assert batch["labels"][0].tolist() == [-100] * prefix + short + [-100, -100]
    assert batch["labels"][1].tolist() == [-100] * prefix + long
    assert batch["attention_mask"].sum(1).tolist() == [prefix + 4, prefix + 6]
    assert batch["input_ids"][0, prefix : prefix + 4].tolist() == short
    assert batch["input_ids"][0, -2:].tolist() == [tok.pad_token_id] * 2
    assert (batch["mm_token_type_ids"] == 2).sum(1).tolist() == [16, 16]
    assert batch["video_grid_thw"].tolist() == [[4, 4, 4], [4, 4, 4]]
    assert batch["pixel_values_videos"].shape[0] == 2 * 64


def test_attribute_accuracy_reads_colour_shape_direction():
    tok = build_tiny_tokenizer()
    frames = np.zeros((8, 56, 56, 3), np.uint8)
    batch = caption_batch([(frames, "a red circle moving left"), (frames, "a blue square moving up")], tok)
    labels = batch["labels"]
    logits = torch.zeros(*labels.shape, len(tok))
    for row in range(2):  # perfect teacher-forced predictions: position p predicts the label at p + 1
        for p in range(labels.shape[1] - 1):
            if labels[row, p + 1] != -100:
                logits[row, p, labels[row, p + 1]] = 1.0
    assert attribute_accuracy(logits, batch) == {"color": 1.0, "shape": 1.0, "direction": 1.0}
    first = int((labels[1] != -100).nonzero()[0])
    logits[1, first + 3] = 0.0  # row 1's direction word ("up", caption word 4) now predicts token 0
    logits[1, first + 3, 0] = 1.0
    assert attribute_accuracy(logits, batch) == {"color": 1.0, "shape": 1.0, "direction": 0.5}


def test_a_few_steps_write_a_loadable_backbone(tmp_path):
    cfg = CaptionPretrainConfig(batch=4, pixels=56, lr=2e-3, warmup_steps=1, max_steps=8, log_every=2)
    summary = pretrain_captioner(tmp_path / "bb", cfg, progress=False)
    assert summary["steps"] == 8 and [p["step"] for p in summary["curve"]] == [2, 4, 6, 8]
    assert summary["curve"][-1]["loss"] < 0.85 * summary["curve"][0]["loss"]
    report = json.loads((tmp_path / "bb" / "pretrain_report.json").read_text())
    assert report["steps"] == 8 and report["config"]["batch"] == 4
    assert not (tmp_path / "bb" / "random_init").exists()

    trained, _ = load_backbone(tmp_path / "bb")
    random, _ = load_backbone(make_tiny_backbone(tmp_path / "random", cfg.tiny, cfg.seed))
    moved = [
        name
        for (name, a), (_, b) in zip(trained.named_parameters(), random.named_parameters())
        if not torch.equal(a, b)
    ]
    assert len(moved) > 10  # the saved weights are the trained ones, not the random initialisation
    model = VideoReward.build(RewardModelConfig(name_or_path=str(tmp_path / "bb")))

    more = pretrain_captioner(
        tmp_path / "bb2", dataclasses.replace(cfg, max_steps=2, init=str(tmp_path / "bb")), progress=False
    )  # a continued run starts where the first ended, history kept
    assert more["earlier"][0]["steps"] == 8 and more["earlier"][0]["curve"] == summary["curve"]
    assert more["curve"][0]["loss"] < summary["curve"][0]["loss"]
    vision = dict(model._vlm().visual.named_parameters())
    for name, p in trained.model.visual.named_parameters():
        assert torch.equal(vision[name], p), name


def test_cli_help():
    out = subprocess.run(
        [sys.executable, "-m", "raypipe.cli", "pretrain-reward-backbone", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "minutes = " in out and "--out" in out
