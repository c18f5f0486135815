"""Our input template and processor: decoded frames + prompt -> Qwen2-VL tensors (SPEC §3.1).

Template (one sequence per video; reward tokens as the paper places them):

    <|im_start|> user <|vision_start|> <|video_pad|> x N <|vision_end|> <|VQ_reward|> <|MQ_reward|>
    {instruction} {prompt} <|TA_reward|> <|im_end|>

Context-agnostic tokens (default VQ, MQ) sit after the video and before the prompt, so under causal attention
they see only the video; context-aware ones (TA) come after the prompt. N = (T/2)·(H/14)·(W/14)/4 video tokens.
The "last_token" variant (ablation) has no reward tokens and reads the final token.

`template="videoalign"` is the released VideoReward's input instead: one user turn holding the video and the
official "detailed_special" instruction text (read from the user's copy, `reward/videoalign.py read_template`) with
the prompt inserted, rendered with the base model's own chat template (`add_generation_prompt=True`, which adds
Qwen2-VL's default system turn). The reward tokens sit where that text puts them; a dimension's score is read at
its own token.
"""

from __future__ import annotations

import numpy as np
import torch

from raypipe.reward.backbone import IM_END, IM_START, VIDEO_PAD, VISION_END, VISION_START

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
PATCH, MERGE, TEMPORAL = 14, 2, 2
TEMPLATES = ("raypipe", "videoalign")


def reward_token(dim: str) -> str:
    return f"<|{dim}_reward|>"


def video_patches(frames: np.ndarray) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """uint8 [T, H, W, 3] -> (flattened patches [t·h·w, 3·2·14·14], grid (t, h, w)) in Qwen2-VL's layout.

    Patches are ordered merge-block by merge-block (the 2x2 neighbours the vision tower merges are adjacent),
    each patch flattened channel-major over (C, temporal 2, 14, 14), pixels CLIP-normalised.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got {frames.shape}")
    t, h, w, _ = frames.shape
    if h % (PATCH * MERGE) or w % (PATCH * MERGE):
        raise ValueError(f"frame size {h}x{w} is not a multiple of {PATCH * MERGE} (sample with SamplingConfig)")
    if t % TEMPORAL:
        frames = np.concatenate([frames, frames[-1:]], axis=0)  # as Qwen2-VL: repeat the last frame
        t += 1
    x = (frames.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
    x = torch.from_numpy(x).permute(0, 3, 1, 2)  # T, C, H, W
    gt, gh, gw = t // TEMPORAL, h // PATCH, w // PATCH
    x = x.reshape(gt, TEMPORAL, 3, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, 3 * TEMPORAL * PATCH * PATCH).contiguous(), (gt, gh, gw)


def expand_video_pad(ids: list[int], pad: int, n_video: int) -> tuple[list[int], int]:
    """A chat-rendered sequence holding exactly one video pad token with that token repeated `n_video` times (the
    video's merged patches); returns (ids, position of the first video token)."""
    if ids.count(pad) != 1:
        raise ValueError(f"the chat template must render exactly one {VIDEO_PAD} per video, got {ids.count(pad)}")
    k = ids.index(pad)
    return ids[:k] + [pad] * n_video + ids[k + 1 :], k


class RewardProcessor:
    """Builds model inputs for one or many (frames, prompt) samples with a given tokenizer."""

    def __init__(
        self,
        tokenizer,
        dimensions,
        context_agnostic=("VQ", "MQ"),
        head: str = "special_tokens",
        instruction: str = "",
        template: str = "raypipe",
        template_text: str | None = None,
    ):
        if head not in ("special_tokens", "last_token"):
            raise ValueError(f"head must be special_tokens or last_token, got {head!r}")
        if template not in TEMPLATES:
            raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
        if template == "videoalign" and (head != "special_tokens" or not template_text):
            raise ValueError("template videoalign needs head=special_tokens and the template text (template_file)")
        unknown = [d for d in context_agnostic if d not in dimensions]
        if unknown:
            raise ValueError(f"context_agnostic {unknown} not among dimensions {list(dimensions)}")
        self.tokenizer, self.dimensions, self.head = tokenizer, list(dimensions), head
        self.agnostic = [d for d in self.dimensions if d in context_agnostic]
        self.aware = [d for d in self.dimensions if d not in context_agnostic]
        self.instruction, self.template, self.template_text = instruction, template, template_text
        if head == "special_tokens":
            tokenizer.add_special_tokens(
                {"additional_special_tokens": [reward_token(d) for d in self.dimensions]},
                replace_extra_special_tokens=False,
            )
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (IM_START, IM_END, VISION_START, VISION_END, VIDEO_PAD)}
        self.ids = ids
        self.reward_ids = (
            {d: tokenizer.convert_tokens_to_ids(reward_token(d)) for d in self.dimensions}
            if head == "special_tokens"
            else {}
        )
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else ids[IM_END]
        self._user = tokenizer.encode("user", add_special_tokens=False)

    def _text_ids(self, prompt: str) -> list[int]:
        text = f"{self.instruction} {prompt}".strip() if self.instruction else prompt
        return self.tokenizer.encode(text, add_special_tokens=False)

    def encode(self, frames: np.ndarray, prompt: str) -> dict:
        """One sample: token ids, video token types, patches, grid and the reward-token positions."""
        patches, (gt, gh, gw) = video_patches(frames)
        n_video = gt * gh * gw // (MERGE * MERGE)
        if self.template == "videoalign":
            return self._encode_chat(patches, (gt, gh, gw), n_video, prompt)
        ids = [self.ids[IM_START], *self._user, self.ids[VISION_START]]
        video_start = len(ids)
        ids += [self.ids[VIDEO_PAD]] * n_video + [self.ids[VISION_END]]
        positions = {}
        for d in self.agnostic if self.head == "special_tokens" else ():
            positions[d] = len(ids)
            ids.append(self.reward_ids[d])
        ids += self._text_ids(prompt or "")
        for d in self.aware if self.head == "special_tokens" else ():
            positions[d] = len(ids)
            ids.append(self.reward_ids[d])
        ids.append(self.ids[IM_END])
        types = [0] * len(ids)
        types[video_start : video_start + n_video] = [2] * n_video
        if self.head == "special_tokens":
            reward_positions = [positions[d] for d in self.dimensions]
        else:
            reward_positions = [len(ids) - 1] * len(self.dimensions)
        return {
            "input_ids": ids,
            "mm_token_type_ids": types,
            "pixel_values_videos": patches,
            "video_grid_thw": (gt, gh, gw),
            "reward_positions": reward_positions,
        }

    def chat_text(self, prompt: str) -> str:
        """The released model's input text: the instruction with the prompt in one user turn after the video,
        rendered with the tokenizer's chat template (one `<|video_pad|>`, expanded to the video's tokens later)."""
        text = self.template_text.format(text_prompt=prompt or "")
        messages = [{"role": "user", "content": [{"type": "video", "video": "video"}, {"type": "text", "text": text}]}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _encode_chat(self, patches, grid, n_video: int, prompt: str) -> dict:
        ids, k = expand_video_pad(self.tokenizer(self.chat_text(prompt))["input_ids"], self.ids[VIDEO_PAD], n_video)
        found = {d: [i for i, t in enumerate(ids) if t == self.reward_ids[d]] for d in self.dimensions}
        bad = {d: len(p) for d, p in found.items() if len(p) != 1}
        if bad:
            raise ValueError(f"the template must hold each reward token exactly once; counts {bad}")
        types = [0] * len(ids)
        types[k : k + n_video] = [2] * n_video
        return {
            "input_ids": ids,
            "mm_token_type_ids": types,
            "pixel_values_videos": patches,
            "video_grid_thw": grid,
            "reward_positions": [found[d][0] for d in self.dimensions],
        }

    def collate(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        """Right-pads token sequences; concatenates video patches in sample order."""
        length = max(len(s["input_ids"]) for s in samples)
        n = len(samples)
        input_ids = torch.full((n, length), self.pad_id, dtype=torch.long)
        types = torch.zeros((n, length), dtype=torch.int32)
        mask = torch.zeros((n, length), dtype=torch.long)
        for i, s in enumerate(samples):
            k = len(s["input_ids"])
            input_ids[i, :k] = torch.tensor(s["input_ids"])
            types[i, :k] = torch.tensor(s["mm_token_type_ids"], dtype=torch.int32)
            mask[i, :k] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "mm_token_type_ids": types,
            "pixel_values_videos": torch.cat([s["pixel_values_videos"] for s in samples]),
            "video_grid_thw": torch.tensor([s["video_grid_thw"] for s in samples], dtype=torch.long),
            "reward_positions": torch.tensor([s["reward_positions"] for s in samples], dtype=torch.long),
        }

    def __call__(self, frames_list, prompts) -> dict[str, torch.Tensor]:
        return self.collate([self.encode(f, p) for f, p in zip(frames_list, prompts)])
