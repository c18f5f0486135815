"""Random Wan2.1/2.2 pipelines built from a config in code (no download): the tiny ones tests and the demo use, and
real shapes (1.3B, TI2V-5B, A14B, I2V-14B) with random weights for GPU benchmarks.

    make_tiny_wan("/tmp/tiny-wan", TinyWanConfig(), seed=0)      # a WanPipeline folder, random weights
    pipe = build_random_wan(TinyWanConfig.wan21_1_3b(), dtype="bfloat16", device="cuda")   # in memory
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from raypipe.flow.common import build_word_tokenizer, cast_like_pretrained, tiny_t5_encoder


@dataclasses.dataclass
class TinyWanConfig:
    """A tiny random Wan2.1 (same diffusers/transformers classes as the real one)."""

    vae_base_dim: int = 8  # VAE base channels
    z_dim: int = 4  # latent channels
    vae_dim_mult: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 2])  # 2 downsamples: spatial 4
    vae_temporal_downsample: list[bool] = dataclasses.field(default_factory=lambda: [False, True])  # frames 1+2k
    num_attention_heads: int = 2  # transformer heads
    attention_head_dim: int = 16  # per-head width
    num_layers: int = 2  # transformer blocks
    ffn_dim: int = 64  # feed-forward width
    text_dim: int = 32  # text encoder width
    text_layers: int = 1  # text encoder layers
    text_heads: int = 2  # text encoder heads
    text_ff: int = 64  # text encoder feed-forward width
    max_text_len: int = 16  # prompt tokens kept
    shift: float = 3.0  # flow-matching time shift of the scheduler
    freq_dim: int = 32  # timestep embedding width
    rope_max_seq_len: int = 64  # RoPE table length (>= patched sizes)
    vae_num_res_blocks: int = 1  # VAE residual blocks per level
    # Wan2.2: TI2V-5B's VAE (residual blocks, 2x2 pixel patches: spatial x16 at real size) and its per-token
    # timesteps; A14B's two experts (a second transformer below `boundary_ratio`)
    vae_is_residual: bool = False
    vae_patch_size: int | None = None  # pixels folded into channels before the encoder (Wan2.2 TI2V: 2)
    vae_decoder_base_dim: int | None = None  # None: vae_base_dim
    experts: int = 1  # 2: Wan2.2 A14B (transformer: t >= boundary_ratio; transformer_2: below)
    boundary_ratio: float = 0.875  # A14B T2V's switch (its I2V: 0.9)
    expand_timesteps: bool = False  # Wan2.2 TI2V: a timestep per latent token
    # image-to-video by channels (WanImageToVideoPipeline: Wan2.1 I2V, Wan2.2 I2V-A14B): the transformer takes
    # [latents, first-frame mask, conditioning latents]
    i2v: bool = False  # WanImageToVideoPipeline with 2·z_dim + temporal input channels
    image_dim: int | None = None  # the CLIP image encoder's width (Wan2.1 I2V; None: no image encoder)
    image_size: int = 32  # the CLIP image encoder's input size (a two-layer stand-in of its width and tokens)
    image_patch: int = 16  # its patch size: (image_size / image_patch)² + 1 states (Wan2.1 I2V's ViT-H/14: 257)

    @classmethod
    def wan22_ti2v_tiny(cls) -> TinyWanConfig:
        """A tiny Wan2.2 TI2V: the residual, patchified VAE (spatial 4·2 = 8) and per-token timesteps."""
        return cls(z_dim=6, vae_is_residual=True, vae_patch_size=2, vae_decoder_base_dim=12, expand_timesteps=True)

    @classmethod
    def wan22_a14b_tiny(cls) -> TinyWanConfig:
        """A tiny Wan2.2 A14B: two experts switched at the boundary."""
        return cls(experts=2)

    @classmethod
    def wan21_i2v_tiny(cls) -> TinyWanConfig:
        """A tiny Wan2.1 I2V: channel-concatenated image latents and a CLIP image encoder."""
        return cls(i2v=True, image_dim=16)

    @classmethod
    def wan22_i2v_a14b_tiny(cls) -> TinyWanConfig:
        """A tiny Wan2.2 I2V-A14B: two experts (boundary 0.9) with channel-concatenated image latents, no CLIP."""
        return cls(i2v=True, experts=2, boundary_ratio=0.9)

    @classmethod
    def wan22_ti2v_5b(cls) -> TinyWanConfig:
        """Wan2.2-TI2V-5B's transformer and VAE shapes (random weights; GPU benchmarks)."""
        return dataclasses.replace(
            cls.wan21_1_3b(),
            vae_base_dim=160,
            vae_decoder_base_dim=256,
            z_dim=48,
            vae_is_residual=True,
            vae_patch_size=2,
            num_attention_heads=24,
            ffn_dim=14336,
            shift=5.0,
            expand_timesteps=True,
        )

    @classmethod
    def wan21_i2v_14b(cls) -> TinyWanConfig:
        """Wan2.1-I2V-14B's shapes: 40 blocks, 40 heads x 128, FFN 13824, 36 input channels, image attention over
        257 CLIP ViT-H states of width 1280 (the image encoder a two-layer stand-in with that output)."""
        return dataclasses.replace(
            cls.wan21_1_3b(),
            num_attention_heads=40,
            num_layers=40,
            ffn_dim=13824,
            i2v=True,
            image_dim=1280,
            image_size=224,
            image_patch=14,
        )

    @classmethod
    def wan22_i2v_a14b(cls) -> TinyWanConfig:
        """Wan2.2-I2V-A14B's shapes: A14B's two experts with 36 input channels (no image encoder), boundary 0.9."""
        return dataclasses.replace(cls.wan22_a14b(), i2v=True, boundary_ratio=0.9)

    @classmethod
    def wan22_a14b(cls) -> TinyWanConfig:
        """Wan2.2-T2V-A14B's shapes: two 14B experts (40 blocks, 40 heads x 128, FFN 13824) and Wan2.1's VAE."""
        return dataclasses.replace(
            cls.wan21_1_3b(), num_attention_heads=40, num_layers=40, ffn_dim=13824, experts=2, shift=12.0
        )

    @classmethod
    def wan21_1_3b(cls) -> TinyWanConfig:
        """Wan2.1-T2V-1.3B's transformer and VAE shapes (random weights; GPU benchmarks). The text encoder is a
        one-layer stand-in with UMT5-XXL's output width (4096): training reads cached text embeddings."""
        return cls(
            vae_base_dim=96,
            z_dim=16,
            vae_dim_mult=[1, 2, 4, 4],
            vae_temporal_downsample=[False, True, True],
            num_attention_heads=12,
            attention_head_dim=128,
            num_layers=30,
            ffn_dim=8960,
            text_dim=4096,
            text_layers=1,
            text_heads=32,
            text_ff=256,
            max_text_len=226,
            shift=3.0,
            freq_dim=256,
            rope_max_seq_len=1024,
            vae_num_res_blocks=2,
        )


def build_random_wan(cfg: TinyWanConfig | None = None, seed: int = 0, dtype: str = "float32", device: str = "cpu"):
    """A WanPipeline (tokenizer, UMT5 encoder, VAE, transformer, scheduler) with random weights, built in memory
    on `device` (weights are drawn there: a 1.3B-shaped transformer takes seconds on a GPU)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    WanImageToVideoPipeline = i2v_pipeline_class()

    cfg = cfg or TinyWanConfig()
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer()
    with torch.device(device):
        text_encoder = tiny_t5_encoder(UMT5EncoderModel, UMT5Config, tokenizer, cfg)
        patch = cfg.vae_patch_size or 1
        spatial = 2 ** (len(cfg.vae_dim_mult) - 1) * patch
        temporal = 2 ** sum(bool(x) for x in cfg.vae_temporal_downsample)
        vae = AutoencoderKLWan(
            base_dim=cfg.vae_base_dim,
            decoder_base_dim=cfg.vae_decoder_base_dim,
            z_dim=cfg.z_dim,
            dim_mult=list(cfg.vae_dim_mult),
            num_res_blocks=cfg.vae_num_res_blocks,
            temperal_downsample=list(cfg.vae_temporal_downsample),
            latents_mean=[0.0] * cfg.z_dim,
            latents_std=[1.0] * cfg.z_dim,
            is_residual=cfg.vae_is_residual,
            in_channels=3 * patch * patch,
            out_channels=3 * patch * patch,
            patch_size=cfg.vae_patch_size,
            scale_factor_temporal=temporal,
            scale_factor_spatial=spatial,
        )
        inner = cfg.num_attention_heads * cfg.attention_head_dim
        transformers = [
            WanTransformer3DModel(
                patch_size=(1, 2, 2),
                num_attention_heads=cfg.num_attention_heads,
                attention_head_dim=cfg.attention_head_dim,
                in_channels=2 * cfg.z_dim + temporal if cfg.i2v else cfg.z_dim,
                out_channels=cfg.z_dim,
                image_dim=cfg.image_dim if cfg.i2v else None,
                added_kv_proj_dim=inner if cfg.i2v and cfg.image_dim else None,
                text_dim=cfg.text_dim,
                freq_dim=cfg.freq_dim,
                ffn_dim=cfg.ffn_dim,
                num_layers=cfg.num_layers,
                rope_max_seq_len=cfg.rope_max_seq_len,
            )
            for _ in range(cfg.experts)
        ]
        image_encoder = image_processor = None
        if cfg.i2v and cfg.image_dim:
            from transformers import CLIPVisionConfig, CLIPVisionModel

            try:  # the PIL-backed processor (the default one wants torchvision and says so on every load)
                from transformers import CLIPImageProcessorPil as CLIPImageProcessor
            except ImportError:
                from transformers import CLIPImageProcessor

            image_encoder = CLIPVisionModel(
                CLIPVisionConfig(
                    hidden_size=cfg.image_dim,
                    intermediate_size=2 * cfg.image_dim,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    image_size=cfg.image_size,
                    patch_size=cfg.image_patch,
                )
            )
            side = {"height": cfg.image_size, "width": cfg.image_size}
            image_processor = CLIPImageProcessor(size={"shortest_edge": cfg.image_size}, crop_size=side)
    two = cfg.experts == 2
    common = {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "transformer": transformers[0],
        "transformer_2": transformers[1] if two else None,
        "boundary_ratio": cfg.boundary_ratio if two else None,
        "expand_timesteps": cfg.expand_timesteps,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=cfg.shift),
    }
    if cfg.i2v:
        pipe = WanImageToVideoPipeline(**common, image_encoder=image_encoder, image_processor=image_processor)
    else:
        pipe = WanPipeline(**common)
    for model in (text_encoder, vae, *transformers, *([image_encoder] if image_encoder is not None else [])):
        cast_like_pretrained(model, getattr(torch, dtype))
    return pipe


def i2v_pipeline_class():
    """diffusers' WanImageToVideoPipeline, imported without transformers' notice that its CLIP image processor falls
    back to the PIL one when torchvision is absent (the same preprocessing; nothing for a user to do)."""
    from transformers.utils import logging as transformers_logging

    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        from diffusers import WanImageToVideoPipeline

        return WanImageToVideoPipeline
    finally:
        transformers_logging.set_verbosity(level)


def make_tiny_wan(path: str | os.PathLike, cfg: TinyWanConfig | None = None, seed: int = 0) -> Path:
    """Write a tiny random WanPipeline (tokenizer, UMT5 encoder, VAE, transformer, scheduler) to `path`."""
    cfg = cfg or TinyWanConfig()
    pipe = build_random_wan(cfg, seed)
    path = Path(path)
    pipe.save_pretrained(path)
    (path / "raypipe_family.json").write_text(
        json.dumps({"family": "wan", "max_text_len": cfg.max_text_len, "shift": cfg.shift})
    )
    return path
