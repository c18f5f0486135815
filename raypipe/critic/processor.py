"""The critic's conversations: decoded frames + prompt + a dimension's question -> Qwen2-VL tensors.

    processor = CriticProcessor(tokenizer, questions)
    batch = processor.train_batch(frames_list, prompts, dims, answers)   # labels on the answer tokens only
    batch = processor.prompt_batch(frames_list, prompts, dims)           # left-padded, for generate()

One user turn holds the video and "{prompt} {question}" (LiFT's "<video>\\n {caption} {question}"), rendered with
the base model's chat template with the generation prompt; the answer "<Rating>. <reason>" and the end-of-turn
token follow. Training labels are -100 everywhere except on the answer and its end token, so the loss is the
answer's next-token cross-entropy alone (SPEC §8). A tokenizer without a chat template (the tiny word-level one)
gets `TINY_CHAT_TEMPLATE`, Qwen2-VL's shape without the system turn. Words a word-level tokenizer does not know
(`unknown_words`) are added as whole-word tokens before the model is built; a BPE tokenizer knows every word.
"""

from __future__ import annotations

import numpy as np
import torch

from raypipe.reward.backbone import IM_END, VIDEO_PAD
from raypipe.reward.processor import MERGE, expand_video_pad, video_patches

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)
IGNORE = -100


def unknown_words(tokenizer, texts) -> list[str]:
    """Words of `texts` (in first-seen order) that the tokenizer maps to its unknown token; [] for tokenizers
    without one (byte-level BPE), which can spell any word."""
    unk = tokenizer.unk_token_id
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if unk is None or backend is None:
        return []
    seen: dict[str, None] = {}
    for text in texts:
        normal = backend.normalizer.normalize_str(text) if backend.normalizer else text
        pieces = backend.pre_tokenizer.pre_tokenize_str(normal) if backend.pre_tokenizer else [(normal, None)]
        for piece, _ in pieces:
            if piece not in seen and tokenizer.convert_tokens_to_ids(piece) == unk:
                seen[piece] = None
    return list(seen)


def add_words(tokenizer, words) -> int:
    """Add `words` as whole-word tokens (so "good" never matches inside "goodness"); returns how many were new."""
    from tokenizers import AddedToken

    return tokenizer.add_tokens([AddedToken(w, single_word=True, normalized=True) for w in words])


class CriticProcessor:
    """Builds the critic's training and generation inputs with one tokenizer and one question per dimension."""

    def __init__(self, tokenizer, questions: dict[str, str], added_words=(), video_first: bool = True):
        if not questions or not all(isinstance(q, str) and q.strip() for q in questions.values()):
            raise ValueError(f"questions must give every dimension a non-empty question, got {questions}")
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = TINY_CHAT_TEMPLATE
        if added_words:
            add_words(tokenizer, added_words)
        self.tokenizer, self.questions, self.video_first = tokenizer, dict(questions), video_first
        self.video_pad = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
        self.end_id = tokenizer.convert_tokens_to_ids(IM_END)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_id

    def user_text(self, prompt: str, dim: str) -> str:
        if dim not in self.questions:
            raise ValueError(f"no question for dimension {dim!r} (have {sorted(self.questions)})")
        return f"{(prompt or '').strip()} {self.questions[dim].strip()}".strip()

    def prompt_text(self, prompt: str, dim: str) -> str:
        """The rendered conversation up to the assistant's answer (one video pad token, expanded later)."""
        content = [{"type": "video", "video": "video"}, {"type": "text", "text": self.user_text(prompt, dim)}]
        if not self.video_first:
            content.reverse()
        messages = [{"role": "user", "content": content}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, frames: np.ndarray, prompt: str, dim: str, answer: str | None = None) -> dict:
        """One conversation: ids (+ the answer and end token when given), video token types, labels, patches."""
        patches, (gt, gh, gw) = video_patches(frames)
        n_video = gt * gh * gw // (MERGE * MERGE)
        prompt_ids = self.tokenizer(self.prompt_text(prompt, dim), add_special_tokens=False)["input_ids"]
        ids, k = expand_video_pad(prompt_ids, self.video_pad, n_video)
        labels = [IGNORE] * len(ids)
        if answer is not None:
            answer_ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [self.end_id]
            ids, labels = ids + answer_ids, labels + answer_ids
        types = [0] * len(ids)
        types[k : k + n_video] = [2] * n_video
        return {
            "input_ids": ids,
            "labels": labels,
            "mm_token_type_ids": types,
            "pixel_values_videos": patches,
            "video_grid_thw": (gt, gh, gw),
        }

    def collate(self, samples: list[dict], left: bool = False) -> dict[str, torch.Tensor]:
        """Pads to the longest sequence (left for generation, right for training); patches in sample order."""
        length = max(len(s["input_ids"]) for s in samples)
        n = len(samples)
        out = {
            "input_ids": torch.full((n, length), self.pad_id, dtype=torch.long),
            "labels": torch.full((n, length), IGNORE, dtype=torch.long),
            "attention_mask": torch.zeros((n, length), dtype=torch.long),
            "mm_token_type_ids": torch.zeros((n, length), dtype=torch.int32),
        }
        for i, s in enumerate(samples):
            k = len(s["input_ids"])
            cols = slice(length - k, length) if left else slice(0, k)
            out["input_ids"][i, cols] = torch.tensor(s["input_ids"])
            out["labels"][i, cols] = torch.tensor(s["labels"])
            out["attention_mask"][i, cols] = 1
            out["mm_token_type_ids"][i, cols] = torch.tensor(s["mm_token_type_ids"], dtype=torch.int32)
        out["pixel_values_videos"] = torch.cat([s["pixel_values_videos"] for s in samples])
        out["video_grid_thw"] = torch.tensor([s["video_grid_thw"] for s in samples], dtype=torch.long)
        return out

    def train_batch(self, frames_list, prompts, dims, answers) -> dict[str, torch.Tensor]:
        return self.collate([self.encode(f, p, d, a) for f, p, d, a in zip(frames_list, prompts, dims, answers)])

    def prompt_batch(self, frames_list, prompts, dims) -> dict[str, torch.Tensor]:
        batch = self.collate([self.encode(f, p, d) for f, p, d in zip(frames_list, prompts, dims)], left=True)
        del batch["labels"]
        return batch
