"""VideoReward (SPEC §3.1): Qwen2-VL + one special token per dimension + one shared linear head.

    model = VideoReward.build(RewardModelConfig(name_or_path="/models/Qwen2-VL-2B-Instruct"))
    batch = model.processor([frames_a, frames_b], [prompt, prompt])
    rewards = model(batch)                          # [2, D], one column per configured dimension
    model.save_pretrained("ckpt/final"); VideoReward.from_pretrained("ckpt/final")   # no Ray needed

Trainable parts (paper defaults): LoRA on the language model's linear layers, the whole vision tower, the
reward-token embedding rows (kept as a separate [D, hidden] parameter written into the input embeddings, so the
rest of the embedding table stays frozen without gradient masks), and the head.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from raypipe.reward.backbone import TinyBackboneConfig, load_backbone, make_tiny_backbone
from raypipe.reward.processor import RewardProcessor

LM_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclasses.dataclass
class LoraSettings:
    enabled: bool = True  # LoRA on the language model (false: train it whole)
    r: int = 64  # LoRA rank
    alpha: int = 128  # LoRA alpha (scale alpha/r)
    dropout: float = 0.0  # LoRA dropout
    # module names that get adapters
    target_modules: list[str] = dataclasses.field(default_factory=lambda: list(LM_LINEAR))


@dataclasses.dataclass
class RewardModelConfig:
    name_or_path: str | None = None  # local Qwen2-VL folder; None: a tiny random backbone (tests, demo)
    tiny: TinyBackboneConfig = dataclasses.field(default_factory=TinyBackboneConfig)
    tiny_seed: int = 0  # seed of the tiny random backbone built when name_or_path is null
    # reward dimensions, one token and head output each (saved in the checkpoint)
    dimensions: list[str] = dataclasses.field(default_factory=lambda: ["VQ", "MQ", "TA"])
    # dimensions whose token sits right after the video (before the prompt)
    context_agnostic: list[str] = dataclasses.field(default_factory=lambda: ["VQ", "MQ"])
    head: str = "special_tokens"  # or "last_token" (ablation: Linear(hidden, D) on the final token)
    lora: LoraSettings = dataclasses.field(default_factory=LoraSettings)
    train_vision: bool = True  # train the vision tower too
    # Full training of the language model instead of LoRA: for tiny RANDOM backbones, where low-rank updates of
    # random weights learn motion and text alignment far more slowly; real checkpoints use LoRA (paper).
    train_language_model: bool = False
    dtype: str = "float32"  # bfloat16 on GPUs
    instruction: str = ""  # text before the prompt, e.g. "Rate this video for the prompt:"
    # input template: "raypipe" (ours, SPEC §3.1) or "videoalign" (the released VideoReward's instruction text in
    # the base model's chat template; the text is read at run time from template_file / RAYPIPE_VIDEOALIGN_TEMPLATE)
    template: str = "raypipe"
    positions: str = "mrope"  # "mrope" (Qwen2-VL's 3-D rotary positions) or "1d" (0..L-1 on all axes: released)
    head_per_dimension: bool = False  # a head row per dimension read at its own token (VideoAlign output_dim=3)


class VideoReward(nn.Module):
    def __init__(self, backbone: nn.Module, processor: RewardProcessor, cfg: RewardModelConfig):
        super().__init__()
        self.cfg, self.processor = cfg, processor
        self.dimensions = list(cfg.dimensions)
        embed = backbone.get_input_embeddings()
        if len(processor.tokenizer) > embed.num_embeddings:
            backbone.resize_token_embeddings(len(processor.tokenizer))
            embed = backbone.get_input_embeddings()
        hidden = embed.embedding_dim
        dtype = embed.weight.dtype
        self.backbone = backbone
        if cfg.head == "special_tokens":
            with torch.no_grad():  # start the new rows where ordinary tokens live
                base = embed.weight.float().mean(0, keepdim=True).repeat(len(self.dimensions), 1)
                base += torch.randn_like(base) * embed.weight.float().std() * 0.1
            self.reward_embeds = nn.Parameter(base.to(dtype))
            rows = len(self.dimensions) if cfg.head_per_dimension else 1
            self.head = nn.Linear(hidden, rows, bias=False, dtype=dtype)
        else:
            self.reward_embeds = None
            self.head = nn.Linear(hidden, len(self.dimensions), bias=False, dtype=dtype)
        nn.init.normal_(self.head.weight, std=hidden**-0.5)

    # --- construction ------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls, cfg: RewardModelConfig, tiny_dir: str | os.PathLike | None = None, template_file: str | None = None
    ) -> VideoReward:
        """A fresh reward model on a backbone loaded by path (a tiny one is written to `tiny_dir` first)."""
        path = cfg.name_or_path
        if path is None:
            if tiny_dir is None:
                raise ValueError("model.name_or_path is None: give tiny_dir to write the tiny backbone to")
            path = make_tiny_backbone(tiny_dir, cfg.tiny, cfg.tiny_seed)
        backbone, tokenizer = load_backbone(path, cfg.dtype)
        model = cls(backbone, make_processor(tokenizer, cfg, template_file), cfg)
        model.configure_trainable()
        return model

    def configure_trainable(self) -> None:
        """LoRA on the language model; vision tower, reward rows and head trainable; all else frozen."""
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        if self.cfg.train_language_model:
            for name, p in self._vlm().language_model.named_parameters():
                p.requires_grad_("embed_tokens" not in name)  # the table stays frozen; reward rows train apart
        elif self.cfg.lora.enabled:
            self.backbone = with_lora(self.backbone, self.cfg.lora)
        if self.cfg.train_vision:
            for p in self._vlm().visual.parameters():
                p.requires_grad_(True)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the vision and language layers' activations in the backward pass (non-reentrant, so frozen
        inputs under LoRA need no requires_grad trick): ~1/3 more compute for a fraction of the memory."""
        base = self._base()
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def disable_gradient_checkpointing(self) -> None:
        base = self._base()
        (getattr(base, "activation_checkpointing_disable", None) or base.gradient_checkpointing_disable)()

    def _base(self) -> nn.Module:
        """The Qwen2VLForConditionalGeneration under any peft wrapper (LoRA layers are injected in place)."""
        return self.backbone.get_base_model() if hasattr(self.backbone, "get_base_model") else self.backbone

    def _vlm(self) -> nn.Module:
        """The Qwen2VLModel (vision tower + language model, no LM head)."""
        return self._base().model

    # --- forward -----------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rewards [B, D] for a collated batch from `self.processor`."""
        vlm = self._vlm()
        input_ids = batch["input_ids"]
        embeds = vlm.get_input_embeddings()(input_ids)
        positions = batch["reward_positions"]  # [B, D]
        rows = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1).expand_as(positions)
        if self.reward_embeds is not None:
            embeds = embeds.index_put(
                (rows, positions), self.reward_embeds.expand(len(input_ids), -1, -1).to(embeds.dtype)
            )
        out = vlm(
            input_ids=input_ids,
            inputs_embeds=embeds,
            attention_mask=batch["attention_mask"],
            pixel_values_videos=batch["pixel_values_videos"].to(embeds.dtype),
            video_grid_thw=batch["video_grid_thw"],
            mm_token_type_ids=batch["mm_token_type_ids"],
            position_ids=self._position_ids(input_ids),
            use_cache=False,
        )
        hidden = out.last_hidden_state
        if self.reward_embeds is None:
            return self.head(hidden[rows[:, 0], positions[:, 0]]).float()
        values = self.head(hidden[rows, positions])  # [B, D, H] -> [B, D, 1] (shared head) or [B, D, D] (per dim)
        return (values.diagonal(dim1=1, dim2=2) if self.cfg.head_per_dimension else values.squeeze(-1)).float()

    def _position_ids(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """None: Qwen2-VL computes its 3-D M-RoPE positions; "1d": 0..L-1 on every axis (the released model)."""
        if self.cfg.positions == "mrope":
            return None
        return torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)

    def score(self, frames_list, prompts) -> torch.Tensor:
        """Raw rewards [N, D] for decoded videos, in eval mode without gradients."""
        self.eval()
        device = next(self.parameters()).device
        with torch.no_grad():
            batch = {k: v.to(device) for k, v in self.processor(frames_list, prompts).items()}
            return self(batch).cpu()

    # --- saving / loading --------------------------------------------------------------------------------
    def save_pretrained(
        self, path: str | os.PathLike, norm_stats: dict | None = None, extra: dict | None = None
    ) -> Path:
        """A folder loadable without Ray: merged backbone + tokenizer, head weights, config, norm stats."""
        from safetensors.torch import save_file

        from raypipe.config import to_dict

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        full = self.backbone
        if hasattr(full, "merge_and_unload"):
            import copy

            full = copy.deepcopy(full).merge_and_unload()
        full.save_pretrained(path / "backbone")
        self.processor.tokenizer.save_pretrained(path / "backbone")
        tensors = {"head.weight": self.head.weight.detach().contiguous().cpu()}
        if self.reward_embeds is not None:
            tensors["reward_embeds"] = self.reward_embeds.detach().contiguous().cpu()
        save_file(tensors, str(path / "reward_head.safetensors"))
        cfg = to_dict(self.cfg)
        (path / "reward_config.json").write_text(json.dumps(cfg, indent=2))
        if norm_stats is not None:
            (path / "norm_stats.json").write_text(json.dumps(norm_stats, indent=2))
        for name, obj in (extra or {}).items():
            (path / name).write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=2))
        return path

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: str | None = None,
        device: str | torch.device = "cpu",
        base: str | None = None,
        template_file: str | None = None,
    ) -> VideoReward:
        """Load a folder written by `save_pretrained` (LoRA already merged), or a checkpoint folder in the released
        VideoAlign layout (`model_config.json` + `checkpoint-<step>/`; `base` overrides its base model path).
        `template_file`: the official prompt_template.py for the videoalign template. Nothing from the hub."""
        from safetensors.torch import load_file

        from raypipe.reward import videoalign

        path = Path(path)
        if videoalign.is_videoalign(path):
            return videoalign.load(cls, path, dtype=dtype, device=device, base=base, template_file=template_file)
        if not (path / "reward_config.json").exists():
            raise FileNotFoundError(
                f"{path} is not a VideoReward checkpoint (no reward_config.json, nor model_config.json + checkpoint-*/)"
            )
        cfg = _dataclass_from(RewardModelConfig, json.loads((path / "reward_config.json").read_text()))
        if dtype:
            cfg.dtype = dtype
        backbone, tokenizer = load_backbone(path / "backbone", cfg.dtype)
        model = cls(backbone, make_processor(tokenizer, cfg, template_file), cfg)
        state = load_file(str(path / "reward_head.safetensors"))
        with torch.no_grad():
            model.head.weight.copy_(state["head.weight"])
            if model.reward_embeds is not None:
                model.reward_embeds.copy_(state["reward_embeds"])
        stats = path / "norm_stats.json"
        model.norm_stats = json.loads(stats.read_text()) if stats.exists() else None
        return model.to(device).eval()


def with_lora(vlm: nn.Module, lora: LoraSettings) -> nn.Module:
    """`vlm` wrapped by peft with LoRA adapters on the language model's `lora.target_modules` (the vision tower
    and heads untouched)."""
    from peft import LoraConfig, get_peft_model

    targets = "|".join(lora.target_modules)
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=rf".*language_model.*\.({targets})"
    )
    with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`: not ours to fix
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
        return get_peft_model(vlm, config)


def checkpoint_config(path: str | os.PathLike, base: str | None = None) -> RewardModelConfig:
    """A checkpoint's model config (dimensions, template, positions, head), either layout, without its weights."""
    from raypipe.reward import videoalign

    if videoalign.is_videoalign(path):
        config = videoalign.read_config(path)
        return videoalign.reward_config(config, videoalign.resolve_base(config, base), "float32")
    cfg_path = Path(path) / "reward_config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(
            f"{path} is not a VideoReward checkpoint (no reward_config.json, nor model_config.json)"
        )
    return _dataclass_from(RewardModelConfig, json.loads(cfg_path.read_text()))


def make_processor(tokenizer, cfg: RewardModelConfig, template_file: str | None = None) -> RewardProcessor:
    """The processor for a config; the videoalign template's text is read from the user's copy now."""
    text = None
    if cfg.template == "videoalign":
        from raypipe.reward.videoalign import ensure_chat_template, read_template

        text = read_template(template_file)
        ensure_chat_template(tokenizer, tokenizer.name_or_path)
    if cfg.positions not in ("mrope", "1d"):
        raise ValueError(f"positions must be mrope or 1d, got {cfg.positions!r}")
    return RewardProcessor(
        tokenizer, cfg.dimensions, cfg.context_agnostic, cfg.head, cfg.instruction, cfg.template, text
    )


def _dataclass_from(cls, data: dict):
    from raypipe.config import build_config

    return build_config(cls, data)
