"""The generative critic (LiFT-Critic, SPEC §8): a vision-language model that answers one question per dimension
with "<Rating>. <reason>".

    critic = Critic.build(CriticModelConfig(name_or_path="assets/tiny-qwen2vl"))
    loss = critic(critic.processor.train_batch(frames, prompts, dims, answers))   # answer tokens only
    answers = critic.answer(frames, prompts, dims)                               # one generation per question
    critic.save_pretrained("critic/final"); Critic.from_pretrained("critic/final")

Backbone: Qwen2-VL (`Qwen2VLForConditionalGeneration`, loaded by path exactly as VideoReward's; other model types
are refused with a message, as our processor builds Qwen2-VL's video inputs). LoRA on the language model's linear
layers (LiFT: LoRA on the LLM), or the whole language model (`train_language_model`, for the tiny backbone); rows
of words added to a word-level tokenizer train with it. A saved critic is an ordinary transformers folder (LoRA
merged) + `critic_config.json`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import nn

from raypipe.critic.processor import IGNORE, CriticProcessor
from raypipe.data.ratings import RATINGS
from raypipe.reward.backbone import TinyBackboneConfig, load_backbone, make_tiny_backbone
from raypipe.reward.model import LoraSettings, with_lora

CONFIG_FILE = "critic_config.json"
SUPPORTED_TYPES = ("qwen2_vl",)
# Our own questions (configuration: LiFT's data uses its own; `questions` replaces these).
DEFAULT_QUESTIONS = {
    "VQ": "Rate the visual quality of the video: Good, Normal or Bad? Say why.",
    "MQ": "Rate the motion of the video: Good, Normal or Bad? Say why.",
    "TA": "Rate how well the video shows the prompt: Good, Normal or Bad? Say why.",
}


@dataclasses.dataclass
class CriticModelConfig:
    name_or_path: str | None = None  # local Qwen2-VL folder; None: a tiny random backbone (tests)
    tiny: TinyBackboneConfig = dataclasses.field(default_factory=TinyBackboneConfig)
    tiny_seed: int = 0  # seed of the tiny random backbone built when name_or_path is null
    dimensions: list[str] = dataclasses.field(default_factory=lambda: ["VQ", "MQ", "TA"])  # one question each
    questions: dict[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULT_QUESTIONS))  # per dimension
    lora: LoraSettings = dataclasses.field(default_factory=LoraSettings)
    train_vision: bool = False  # train the vision tower too
    train_language_model: bool = False  # train the whole language model instead of LoRA (tiny backbones)
    dtype: str = "float32"  # bfloat16 on GPUs
    # words added to a word-level tokenizer (the driver fills this from the training answers; BPE needs none)
    added_words: list[str] = dataclasses.field(default_factory=list)
    # loss weight of the rating token against 1 for every other answer token (1: plain SFT, as LiFT)
    rating_weight: float = 1.0
    video_first: bool = True  # the video before the question in the user turn (LiFT's order); false: after it
    max_new_tokens: int = 48  # answer length cap when generating
    temperature: float = 0.0  # 0: greedy; LiFT samples at 0.2


class Critic(nn.Module):
    def __init__(self, vlm: nn.Module, processor: CriticProcessor, cfg: CriticModelConfig):
        super().__init__()
        self.cfg, self.processor, self.dimensions = cfg, processor, list(cfg.dimensions)
        grow_embeddings(vlm, len(processor.tokenizer))
        self.vlm = vlm

    @classmethod
    def build(cls, cfg: CriticModelConfig, tiny_dir: str | os.PathLike | None = None) -> Critic:
        """A fresh critic on a backbone loaded by path (a tiny random one is written to `tiny_dir` first)."""
        path = cfg.name_or_path
        if path is None:
            if tiny_dir is None:
                raise ValueError("model.name_or_path is None: give tiny_dir to write the tiny backbone to")
            path = make_tiny_backbone(tiny_dir, cfg.tiny, cfg.tiny_seed)
        model = cls(*_load(path, cfg), cfg)
        model.configure_trainable()
        return model

    def configure_trainable(self) -> None:
        """LoRA on the language model (or all of it), the vision tower if asked, the word rows if words were added."""
        for p in self.vlm.parameters():
            p.requires_grad_(False)
        if self.cfg.train_language_model:
            for p in self._base().model.language_model.parameters():
                p.requires_grad_(True)
        elif self.cfg.lora.enabled:
            self.vlm = with_lora(self.vlm, self.cfg.lora)
        base = self._base()
        if self.cfg.train_language_model or self.cfg.added_words:  # new words need their input and output rows
            for p in (*base.get_input_embeddings().parameters(), *base.get_output_embeddings().parameters()):
                p.requires_grad_(True)
        if self.cfg.train_vision:
            for p in base.model.visual.parameters():
                p.requires_grad_(True)

    def _base(self) -> nn.Module:
        return self.vlm.get_base_model() if hasattr(self.vlm, "get_base_model") else self.vlm

    def enable_gradient_checkpointing(self) -> None:
        base = self._base()
        kwargs = {"use_reentrant": False}
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The answer loss of a `train_batch` (`answer_loss`: labels -100 outside the answers)."""
        return answer_loss(self.logits(batch), batch["labels"], self.cfg.rating_weight)

    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        dtype = self._base().get_input_embeddings().weight.dtype
        out = self.vlm(
            **{k: v for k, v in batch.items() if k not in ("pixel_values_videos", "labels")},
            pixel_values_videos=batch["pixel_values_videos"].to(dtype),
            use_cache=False,
        )
        return out.logits

    def rating_ids(self) -> list[int]:
        """The first token of each rating word (Good, Normal, Bad), as the critic writes it after the prompt."""
        ids = [self.processor.tokenizer(r, add_special_tokens=False)["input_ids"][0] for r in RATINGS]
        if len(set(ids)) != len(ids):
            raise ValueError(f"the tokenizer starts the ratings with the same token: {ids}")
        return ids

    @torch.no_grad()
    def generate_ids(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """New tokens [N, <= max_new_tokens] for a left-padded `prompt_batch` (greedy, or sampled at temperature)."""
        base = self._base()
        dtype = base.get_input_embeddings().weight.dtype
        sample = self.cfg.temperature > 0
        if generator is not None and sample:  # generate() draws from torch's global generator
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        out = base.generate(
            **{k: v for k, v in batch.items() if k != "pixel_values_videos"},
            pixel_values_videos=batch["pixel_values_videos"].to(dtype),
            max_new_tokens=self.cfg.max_new_tokens,
            do_sample=sample,
            eos_token_id=self.processor.end_id,
            pad_token_id=self.processor.pad_id,
            **({"temperature": self.cfg.temperature, "top_k": 0} if sample else {}),
        )
        return out[:, batch["input_ids"].shape[1] :]

    def answer(self, frames_list, prompts, dims, generator: torch.Generator | None = None) -> list[str]:
        """The critic's answer text for each (frames, prompt, dimension), in eval mode."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        batch = {k: v.to(device) for k, v in self.processor.prompt_batch(frames_list, prompts, dims).items()}
        ids = self.generate_ids(batch, generator).cpu()
        self.train(was_training)
        return [self.decode(row) for row in ids]

    def decode(self, ids: torch.Tensor) -> str:
        """Answer text of generated ids up to the first end-of-turn token."""
        ids = ids.tolist()
        if self.processor.end_id in ids:
            ids = ids[: ids.index(self.processor.end_id)]
        ids = [i for i in ids if i != self.processor.pad_id]
        return self.processor.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """LoRA merged into an ordinary transformers folder + tokenizer + critic_config.json (no Ray needed)."""
        from raypipe.config import to_dict

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        full = self.vlm
        if hasattr(full, "merge_and_unload"):
            import copy

            full = copy.deepcopy(full).merge_and_unload()
        full.save_pretrained(path)
        self.processor.tokenizer.save_pretrained(path)
        cfg = to_dict(self.cfg)
        cfg["name_or_path"] = str(path)
        (path / CONFIG_FILE).write_text(json.dumps(cfg, indent=2))
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: str | None = None, device="cpu") -> Critic:
        """Load a folder written by `save_pretrained`; the added words are already in its tokenizer."""
        from raypipe.config import build_config

        path = Path(path)
        if not (path / CONFIG_FILE).exists():
            raise FileNotFoundError(f"{path} is not a critic checkpoint (no {CONFIG_FILE})")
        cfg = build_config(CriticModelConfig, json.loads((path / CONFIG_FILE).read_text()))
        cfg.name_or_path, cfg.added_words = str(path), []
        if dtype:
            cfg.dtype = dtype
        return cls(*_load(path, cfg), cfg).to(device).eval()


def critic_dimensions(path: str | os.PathLike) -> list[str]:
    """The dimensions a critic checkpoint answers (its critic_config.json; no weights loaded)."""
    config = Path(path) / CONFIG_FILE
    if not config.exists():
        raise FileNotFoundError(f"{path} is not a critic checkpoint (no {CONFIG_FILE})")
    return list(json.loads(config.read_text())["dimensions"])


def grow_embeddings(vlm: nn.Module, rows: int, seed: int = 0) -> None:
    """Resize the input (and untied output) embeddings to `rows`; every new row is the mean of the old rows plus
    Gaussian noise of their per-coordinate std (seeded). Distinct rows matter: transformers' mean resizing gives
    every new word the same row, so "good" and "bad" could not be told apart (as input) nor ever be predicted apart
    (as output: identical logits, a saddle that training barely leaves)."""
    old = vlm.get_input_embeddings().num_embeddings
    if rows <= old:
        return
    vlm.resize_token_embeddings(rows, mean_resizing=False)
    generator = torch.Generator().manual_seed(seed)
    tables = {id(t): t for t in (vlm.get_input_embeddings().weight, vlm.get_output_embeddings().weight)}
    with torch.no_grad():
        for table in tables.values():
            base = table[:old].float()
            noise = torch.randn((rows - old, table.shape[1]), generator=generator)
            table[old:] = (base.mean(0) + noise * base.std(0)).to(table.dtype)


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, rating_weight: float = 1.0) -> torch.Tensor:
    """Next-token cross-entropy over the answer tokens: with ce_j = -log softmax(logits[j-1])[labels[j]] at every
    position j whose label is not -100, L = Σ_j w_j·ce_j / Σ_j w_j, where w_j = rating_weight at each sequence's
    first answer token (the rating) and 1 elsewhere. rating_weight 1 is the plain mean (transformers' LM loss)."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    valid = shift_labels != IGNORE
    ce = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1).clamp(min=0), reduction="none"
    ).view_as(shift_labels)
    first = valid & (valid.int().cumsum(1) == 1)
    weights = valid.float() + (rating_weight - 1.0) * first.float()
    return (ce * weights).sum() / weights.sum().clamp(min=1e-12)


def rating_predictions(logits: torch.Tensor, labels: torch.Tensor, rating_ids: list[int]) -> tuple:
    """(predicted, true) rating indices (into RATINGS) at each sequence's first answer token, the prediction being
    the argmax over the rating tokens alone (teacher-forced: no generation needed)."""
    valid = labels[:, 1:] != IGNORE
    pos = valid.int().argmax(1)  # first answer position (in shifted coordinates)
    rows = torch.arange(len(labels), device=labels.device)
    scores = logits[rows, pos][:, rating_ids]
    truth = labels[rows, pos + 1]
    lookup = {t: i for i, t in enumerate(rating_ids)}
    return scores.argmax(-1), torch.tensor([lookup.get(int(t), -1) for t in truth])


def _load(path, cfg: CriticModelConfig):
    """(model, processor) for a backbone folder; refuses model types whose video inputs we do not build."""
    config = Path(path) / "config.json"
    kind = json.loads(config.read_text()).get("model_type") if config.exists() else None
    if kind is not None and kind not in SUPPORTED_TYPES:
        raise ValueError(f"{path}: model_type {kind!r} is not supported by the critic (supported: {SUPPORTED_TYPES})")
    missing = [d for d in cfg.dimensions if not str(cfg.questions.get(d) or "").strip()]
    if missing:
        raise ValueError(f"no question for dimensions {missing}: set questions.<DIM>")
    vlm, tokenizer = load_backbone(path, cfg.dtype)
    return vlm, CriticProcessor(
        tokenizer, {d: cfg.questions[d] for d in cfg.dimensions}, cfg.added_words, cfg.video_first
    )
