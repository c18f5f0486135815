"""Caption pretraining pieces of the tiny reward backbone, without Ray: SynthPref-style clips with their TRUE
caption, the Qwen2-VL inputs with caption labels, and attribute-word accuracy (`raypipe.recipes.
pretrain_reward_backbone` trains with them)."""

from __future__ import annotations

import numpy as np
import torch

from raypipe.reward.backbone import VISION_END
from raypipe.reward.processor import RewardProcessor
from raypipe.video import synth
from raypipe.video.decode import resize_frames
from raypipe.video.sampling import sample_frame_indices

ATTRIBUTE_WORDS = ("color", "shape", "direction")


def render_caption_sample(rng: np.random.Generator, pixels: int = 112) -> tuple[np.ndarray, str, tuple[str, str, str]]:
    """(frames [8, pixels, pixels, 3], true caption, (colour, shape, direction)) of a random SynthPref-style clip
    at the reference difficulty, levels vq, mq ~ U[0, 1]."""
    attrs = (
        synth.COLORS[rng.integers(len(synth.COLORS))],
        synth.SHAPES[rng.integers(len(synth.SHAPES))],
        synth.DIRECTIONS[rng.integers(len(synth.DIRECTIONS))],
    )
    video = synth.render_video(*attrs, vq=float(rng.random()), mq=float(rng.random()), rng=rng)
    idx = sample_frame_indices(len(video), 8.0, fps=4.0, min_frames=4, max_frames=16)
    return resize_frames(video[idx], pixels, pixels), synth.make_prompt(*attrs), attrs


def caption_batch(samples, tokenizer) -> dict[str, torch.Tensor]:
    """Qwen2-VL inputs for `<|im_start|> user <|vision_start|> video <|vision_end|> caption <|im_end|>` from
    (frames, caption) pairs — the reward template with no reward tokens (RewardProcessor) — with `labels` on the
    caption and the end token only (-100 elsewhere, the LM loss's ignore index)."""
    processor = RewardProcessor(tokenizer, [], context_agnostic=(), head="last_token")
    batch = processor([frames for frames, _ in samples], [caption for _, caption in samples])
    del batch["reward_positions"]
    ids = batch["input_ids"]
    video_end = (ids == tokenizer.convert_tokens_to_ids(VISION_END)).int().argmax(1, keepdim=True)
    caption = (torch.arange(ids.shape[1]) > video_end) & (batch["attention_mask"] > 0)
    batch["labels"] = torch.where(caption, ids, torch.full_like(ids, -100))
    return batch


def attribute_accuracy(logits: torch.Tensor, batch: dict) -> dict[str, float]:
    """Teacher-forced top-1 accuracy on the caption's colour, shape and direction words ("a C S moving D")."""
    labels = batch["labels"]
    first = (labels != -100).int().argmax(1)  # position of "a"
    rows = torch.arange(len(labels))
    out = {}
    for name, k in zip(ATTRIBUTE_WORDS, (1, 2, 4)):
        pos = first + k
        out[name] = float((logits[rows, pos - 1].argmax(-1) == labels[rows, pos]).float().mean())
    return out
