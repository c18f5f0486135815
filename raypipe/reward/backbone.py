"""The Qwen2-VL backbone: loaded by path, whether a real checkpoint or a tiny random one written here.

    make_tiny_backbone("/tmp/tiny-qwen2vl", TinyBackboneConfig(), seed=0)  # offline: config, weights, tokenizer
    model, tokenizer = load_backbone("/tmp/tiny-qwen2vl")                # same call as for Qwen2-VL-2B

The tiny backbone is a real `Qwen2VLForConditionalGeneration` with random weights and a word-level tokenizer
whose vocabulary covers SynthPref prompts; it is saved with `save_pretrained`, so tests and the demo load it
through exactly the code path a user's local copy of `Qwen/Qwen2-VL-2B-Instruct` takes.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

# Vision-language special tokens, named as in Qwen2-VL so templates read the same for both tokenizers.
VISION_START, VISION_END, VIDEO_PAD, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>"
IM_START, IM_END, PAD, UNK = "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<unk>"
TINY_SPECIALS = [PAD, UNK, IM_START, IM_END, VISION_START, VISION_END, VIDEO_PAD, IMAGE_PAD]


@dataclasses.dataclass
class TinyBackboneConfig:
    """A small random Qwen2-VL (calibrated in a prototype: smaller models stayed at chance on MQ/TA)."""

    hidden_size: int = 128  # language model width
    intermediate_size: int = 256  # feed-forward width
    num_hidden_layers: int = 4  # language model layers
    num_attention_heads: int = 4  # attention heads
    num_key_value_heads: int = 2  # key/value heads (GQA)
    vision_depth: int = 2  # vision tower blocks
    vision_embed_dim: int = 64  # vision tower width
    vision_num_heads: int = 2  # vision tower heads


def tiny_vocabulary() -> list[str]:
    """Every word a SynthPref prompt (and our instruction text) uses, plus punctuation."""
    from raypipe.video.synth import COLORS, DIRECTIONS, SHAPES

    words = [
        "a",
        "an",
        "the",
        "moving",
        "is",
        "video",
        "of",
        "prompt",
        "rate",
        "quality",
        "motion",
        "text",
        "alignment",
        ":",
        ",",
        ".",
        "?",
        "!",
        "user",
        "assistant",
    ]
    return list(dict.fromkeys([*words, *COLORS, *SHAPES, *DIRECTIONS]))


def build_tiny_tokenizer():
    """A word-level `PreTrainedTokenizerFast` (lower-cases, splits on whitespace and punctuation)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS + tiny_vocabulary())}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token=UNK, pad_token=PAD, eos_token=IM_END, bos_token=IM_START
    )
    fast.add_special_tokens({"additional_special_tokens": TINY_SPECIALS[2:]})
    return fast


def make_tiny_backbone(path: str | os.PathLike, cfg: TinyBackboneConfig | None = None, seed: int = 0) -> Path:
    """Write a tiny random Qwen2-VL (config, safetensors weights, tokenizer) to `path`; returns it."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    cfg = cfg or TinyBackboneConfig()
    tokenizer = build_tiny_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in TINY_SPECIALS}
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    # M-RoPE splits head_dim/2 rotary frequencies over (t, h, w); Qwen2-VL uses 16:24:24 of 64.
    quarter = head_dim // 2 // 4
    mrope = [head_dim // 2 - 2 * (3 * quarter // 2), 3 * quarter // 2, 3 * quarter // 2]
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
            bos_token_id=ids[IM_START],
            eos_token_id=ids[IM_END],
            pad_token_id=ids[PAD],
        ),
        vision_config=dict(
            depth=cfg.vision_depth,
            embed_dim=cfg.vision_embed_dim,
            hidden_size=cfg.hidden_size,
            num_heads=cfg.vision_num_heads,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
        bos_token_id=ids[IM_START],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_backbone(path: str | os.PathLike, dtype: str = "float32"):
    """(Qwen2VLForConditionalGeneration, tokenizer) from a local folder (no hub access: local_files_only).

    The reward model runs `.model` (the Qwen2VLModel) and never the LM head; keeping the full class means
    checkpoints are saved in the standard layout any Qwen2-VL tool reads."""
    import torch
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if not Path(path).exists():
        raise FileNotFoundError(
            f"backbone {path!r} not found: give model.name_or_path as a local folder (e.g. a copy of "
            f"Qwen/Qwen2-VL-2B-Instruct); nothing is downloaded at run time"
        )
    full = Qwen2VLForConditionalGeneration.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return full, tokenizer
