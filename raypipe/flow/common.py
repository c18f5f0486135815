"""What every generator family shares: a tiny word tokenizer for random models, dtype and device rules, pixels to
and from a VAE's range, frame counts a causal VAE takes, the scheduler's flow shift."""

from __future__ import annotations

import numpy as np
import torch

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def build_word_tokenizer():
    """A word-level tokenizer for SynthPref prompts with T5-style special tokens (pad 0, eos 1, unk 2)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from raypipe.reward.backbone import tiny_vocabulary

    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK, *tiny_vocabulary()])}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def tiny_t5_encoder(model_class, config_class, tokenizer, cfg):
    """A random T5-style text encoder (T5EncoderModel / UMT5EncoderModel with its config class) for a tiny pipeline:
    the word tokenizer's vocabulary, T5's special ids, and cfg's text_dim, text_heads, text_ff, text_layers."""
    config = config_class(
        vocab_size=len(tokenizer),
        d_model=cfg.text_dim,
        d_kv=cfg.text_dim // cfg.text_heads,
        d_ff=cfg.text_ff,
        num_layers=cfg.text_layers,
        num_heads=cfg.text_heads,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return model_class(config)


def cast_like_pretrained(model, dtype: torch.dtype):
    """Cast as `from_pretrained(torch_dtype=dtype)` does: what the class marks as float32-only (Wan: rope, time
    embedder, norms, scale_shift_table) stays float32."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float32 if keep & set(name.split(".")) else dtype)
    return model


def compute_dtype_device(model) -> tuple[torch.dtype, torch.device]:
    """(dtype, device) inputs of a diffusers model (or a DeepSpeed engine around one) must have. Not the first
    parameter's dtype: Wan keeps some parameters float32 in a bf16 model."""
    base = getattr(model, "module", model)
    if hasattr(base, "dtype") and hasattr(base, "device"):
        return base.dtype, base.device
    weight = next(model.parameters())
    return weight.dtype, weight.device


def scheduler_shift(config) -> float:
    """The flow time shift a pipeline folder's scheduler samples with: `shift` (FlowMatchEulerDiscreteScheduler) or
    `flow_shift` (the UniPCMultistepScheduler that Wan-AI's Diffusers folders ship, with use_flow_sigmas)."""
    if config.get("flow_shift") is not None and (config.get("use_flow_sigmas") or "shift" not in config):
        return float(config["flow_shift"])
    return float(config.get("shift", 1.0))


def vae_pixels(frames, device) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> the VAE's input [B, 3, T, H, W] in [-1, 1] on `device` (every family's VAE)."""
    x = torch.as_tensor(np.asarray(frames)).to(device)
    return x.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def uint8_frames(x: torch.Tensor) -> np.ndarray:
    """A VAE's output [B, 3, T, H, W] in [-1, 1] -> uint8 [B, T, H, W, 3] on the CPU."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).cpu().numpy()


def frames_up_to(n: int, step: int) -> int:
    """The largest frame count ≤ n of the form 1 + k·step (what a causal video VAE takes)."""
    if n < 1:
        raise ValueError("need at least one frame")
    return 1 + ((n - 1) // step) * step
