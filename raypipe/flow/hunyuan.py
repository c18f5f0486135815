"""HunyuanVideo 1.0 behind the generator interface of `raypipe.flow.family`.

    make_tiny_hunyuan("/tmp/tiny-hy", TinyHunyuanConfig(), seed=0)    # offline: a HunyuanVideoPipeline folder
    gen = HunyuanFamily.load("/tmp/tiny-hy")                          # same call as for HunyuanVideo-Diffusers
    text = gen.encode_prompts(["a red circle moving left"])           # Llama states + CLIP pooled, packed
    v_hat = gen.velocity(z_t, t, text)                                 # flow matching, t in [0, 1]

HunyuanVideo is a flow model like Wan (x_t = (1 − t)·x0 + t·ε, the transformer predicts ε − x0 at timestep
1000·t), with two text encoders and a guidance embedding:
- prompts: the Llama encoder's hidden states (the third-to-last layer, after the pipeline's chat template; its
  attention mask matters) and CLIP's pooled output. The generator interface passes ONE tensor per prompt batch,
  so `encode_prompts` packs them: [B, 1 + L, D + 1] — row 0 holds the pooled CLIP vector (zero-padded to D), rows
  1..L the Llama states with the attention mask as the extra last channel. `velocity` unpacks; the rest of the
  code only indexes and stacks the tensor along the batch.
- guidance: 1.0 is guidance-distilled: the guidance scale goes in as an embedding (`guidance` × 1000, default 6.0,
  the pipeline's default) on every forward, training included.
- the prompt template: the real checkpoint's chat template is read from the user's installed diffusers
  (`DEFAULT_PROMPT_TEMPLATE`) at run time; tiny random models (a word tokenizer) use the bare prompt.
Latents: the VAE's mode × `scaling_factor` (0.476986 for the real VAE); frames 1 + 4k.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch

from raypipe.flow.common import (
    build_word_tokenizer,
    cast_like_pretrained,
    compute_dtype_device,
    uint8_frames,
    vae_pixels,
)
from raypipe.flow.pipeline_family import FAMILY_FILE, PipelineFamily

BARE_TEMPLATE = {"template": "{}", "crop_start": 0}  # tiny models: the prompt itself


@dataclasses.dataclass
class TinyHunyuanConfig:
    """A tiny random HunyuanVideo 1.0 (the same diffusers/transformers classes as the real one)."""

    vae_channels: list[int] = dataclasses.field(default_factory=lambda: [8, 16, 16])  # 3 levels: spatial 4
    latent_channels: int = 4  # VAE latent channels
    vae_layers: int = 1  # VAE layers per block
    vae_groups: int = 4  # VAE group-norm groups
    num_attention_heads: int = 2  # transformer heads
    attention_head_dim: int = 16  # per-head width (= the sum of rope_axes_dim)
    rope_axes_dim: list[int] = dataclasses.field(default_factory=lambda: [4, 6, 6])  # t, h, w rotary widths
    num_layers: int = 1  # dual-stream blocks
    num_single_layers: int = 1  # single-stream blocks
    num_refiner_layers: int = 1  # text refiner blocks
    text_dim: int = 32  # Llama width
    text_layers: int = 2  # Llama layers (the pipeline reads the third-to-last hidden state: >= 2)
    text_heads: int = 2  # Llama heads
    text_ff: int = 64  # Llama feed-forward width
    clip_dim: int = 16  # CLIP text width (the pooled projection)
    max_text_len: int = 16  # prompt tokens kept
    shift: float = 7.0  # the scheduler's flow shift (HunyuanVideo's default sampling shift)
    guidance: float = 6.0  # the embedded guidance scale
    scaling_factor: float = 0.476986  # VAE latent scale

    @classmethod
    def hunyuan_video(cls) -> TinyHunyuanConfig:
        """HunyuanVideo 1.0's transformer shapes (13B: 20 dual + 40 single blocks, 24 heads x 128) and VAE
        (random weights; GPU benchmarks). The text encoders are one-layer stand-ins with the real widths (Llama
        4096, CLIP-L 768); training reads cached text embeddings."""
        return cls(
            vae_channels=[128, 256, 512, 512],
            latent_channels=16,
            vae_layers=2,
            vae_groups=32,
            num_attention_heads=24,
            attention_head_dim=128,
            rope_axes_dim=[16, 56, 56],
            num_layers=20,
            num_single_layers=40,
            num_refiner_layers=2,
            text_dim=4096,
            text_layers=2,
            text_heads=32,
            text_ff=256,
            clip_dim=768,
            max_text_len=256,
        )


def build_random_hunyuan(
    cfg: TinyHunyuanConfig | None = None, seed: int = 0, dtype: str = "float32", device: str = "cpu"
):
    """A HunyuanVideoPipeline (Llama + CLIP text encoders, VAE, transformer, flow scheduler), random weights."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    cfg = cfg or TinyHunyuanConfig()
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer()
    levels = len(cfg.vae_channels)
    with torch.device(device):
        llama = LlamaModel(
            LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=cfg.text_dim,
                intermediate_size=cfg.text_ff,
                num_hidden_layers=cfg.text_layers,
                num_attention_heads=cfg.text_heads,
                num_key_value_heads=cfg.text_heads,
                max_position_embeddings=max(128, 2 * cfg.max_text_len),
                pad_token_id=0,
            )
        )
        clip = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=cfg.clip_dim,
                intermediate_size=2 * cfg.clip_dim,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=77,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=1,
            )
        )
        vae = AutoencoderKLHunyuanVideo(
            latent_channels=cfg.latent_channels,
            down_block_types=("HunyuanVideoDownBlock3D",) * levels,
            up_block_types=("HunyuanVideoUpBlock3D",) * levels,
            block_out_channels=tuple(cfg.vae_channels),
            layers_per_block=cfg.vae_layers,
            norm_num_groups=cfg.vae_groups,
            spatial_compression_ratio=2 ** (levels - 1),
            temporal_compression_ratio=4,
            scaling_factor=cfg.scaling_factor,
        )
        transformer = HunyuanVideoTransformer3DModel(
            in_channels=cfg.latent_channels,
            out_channels=cfg.latent_channels,
            num_attention_heads=cfg.num_attention_heads,
            attention_head_dim=cfg.attention_head_dim,
            num_layers=cfg.num_layers,
            num_single_layers=cfg.num_single_layers,
            num_refiner_layers=cfg.num_refiner_layers,
            text_embed_dim=cfg.text_dim,
            pooled_projection_dim=cfg.clip_dim,
            rope_axes_dim=tuple(cfg.rope_axes_dim),
            guidance_embeds=True,
        )
    pipe = HunyuanVideoPipeline(
        text_encoder=llama,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=cfg.shift),
        text_encoder_2=clip,
        tokenizer_2=tokenizer,
    )
    for model in (llama, clip, vae, transformer):
        cast_like_pretrained(model, getattr(torch, dtype))
    return pipe


def make_tiny_hunyuan(path: str | os.PathLike, cfg: TinyHunyuanConfig | None = None, seed: int = 0) -> Path:
    """Write a tiny random HunyuanVideoPipeline folder to `path`."""
    cfg = cfg or TinyHunyuanConfig()
    path = Path(path)
    build_random_hunyuan(cfg, seed).save_pretrained(path)
    family = {
        "family": "hunyuan",
        "max_text_len": cfg.max_text_len,
        "shift": cfg.shift,
        "guidance": cfg.guidance,
        "prompt_template": BARE_TEMPLATE,
    }
    (path / FAMILY_FILE).write_text(json.dumps(family))
    return path


class HunyuanFamily(PipelineFamily):
    """HunyuanVideo 1.0 through diffusers' HunyuanVideoPipeline components. Text encoders and VAE are frozen."""

    name = "hunyuan"
    title = "HunyuanVideo"
    pipeline_class = "HunyuanVideoPipeline"
    saved = ("max_text_len", "shift", "guidance", "prompt_template")
    patch_factor = 2
    prediction = "flow"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")

    def __init__(
        self,
        pipeline,
        max_text_len: int = 256,
        shift: float | None = None,
        guidance: float = 6.0,
        prompt_template: dict | None = None,
    ):
        self.pipeline = pipeline
        self.transformer = pipeline.transformer
        self.max_text_len = int(max_text_len)
        self.shift = float(shift if shift is not None else pipeline.scheduler.config.get("shift", 1.0))
        self.guidance = float(guidance)
        self.prompt_template = prompt_template  # None: the pipeline's own (the real checkpoint's chat template)
        for module in (pipeline.text_encoder, pipeline.text_encoder_2, pipeline.vae):
            module.requires_grad_(False).eval()
        vae = pipeline.vae
        self.spatial = int(vae.config.spatial_compression_ratio)
        self.temporal = int(vae.config.temporal_compression_ratio)
        self.scaling = float(vae.config.scaling_factor)
        self.text_dim = int(pipeline.transformer.config.text_embed_dim)
        self.pooled_dim = int(pipeline.transformer.config.pooled_projection_dim)

    # --- frozen encoders ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """[B, 1 + L, D + 1]: row 0 the CLIP pooled vector (zero-padded), rows 1..L the Llama states with the
        attention mask as the last channel (see the module docstring)."""
        from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

        embeds, pooled, mask = self.pipeline.encode_prompt(
            list(prompts),
            prompt_template=self.prompt_template or DEFAULT_PROMPT_TEMPLATE,
            max_sequence_length=self.max_text_len,
            device=self.device,
        )
        return pack_text(embeds.float(), pooled.float(), mask)

    @torch.no_grad()
    def encode_videos(self, frames: np.ndarray | torch.Tensor, sample: bool = False) -> torch.Tensor:
        """uint8 [B, T, H, W, 3] -> scaled latents [B, C, T', H', W'] (the distribution's mode unless `sample`)."""
        vae = self.pipeline.vae
        x = vae_pixels(frames, self.device)
        dist = vae.encode(x.to(vae.dtype)).latent_dist
        z = dist.sample() if sample else dist.mode()
        return z.float() * self.scaling

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> np.ndarray:
        vae = self.pipeline.vae
        x = vae.decode((z.float() / self.scaling).to(vae.dtype)).sample.float()
        return uint8_frames(x)

    # --- the trainable part ------------------------------------------------------------------------------
    def velocity(self, z_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, model=None) -> torch.Tensor:
        """v̂(z_t, t, c) at timestep 1000·t (float32) with the embedded guidance scale."""
        model = model if model is not None else self.transformer
        dtype, device = compute_dtype_device(model)
        embeds, pooled, mask = unpack_text(text.to(device), self.text_dim, self.pooled_dim)
        n = z_t.shape[0]
        out = model(
            hidden_states=z_t.to(device, dtype),
            timestep=(1000.0 * t).to(device, torch.float32),
            encoder_hidden_states=embeds.to(dtype),
            encoder_attention_mask=mask,
            pooled_projections=pooled.to(dtype),
            guidance=torch.full((n,), 1000.0 * self.guidance, device=device, dtype=torch.float32),
            return_dict=False,
        )[0]
        return out.float()


def pack_text(embeds: torch.Tensor, pooled: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, D] states, [B, P] pooled (P ≤ D), [B, L] mask -> one [B, 1 + L, D + 1] tensor."""
    b, length, d = embeds.shape
    if pooled.shape[1] > d:
        raise ValueError(f"the pooled width {pooled.shape[1]} exceeds the text width {d}")
    out = embeds.new_zeros((b, 1 + length, d + 1))
    out[:, 0, : pooled.shape[1]] = pooled
    out[:, 1:, :d] = embeds
    out[:, 1:, d] = mask.to(embeds.dtype)
    return out


def unpack_text(text: torch.Tensor, text_dim: int, pooled_dim: int):
    """The inverse of `pack_text`: (states [B, L, D], pooled [B, P], mask [B, L] long)."""
    if text.dim() != 3 or text.shape[2] != text_dim + 1:
        raise ValueError(
            f"HunyuanVideo text must be [B, 1 + L, {text_dim + 1}] (encode_prompts), got {tuple(text.shape)}"
        )
    return text[:, 1:, :text_dim], text[:, 0, :pooled_dim], text[:, 1:, text_dim].round().long()
