"""CogVideoX (LiFT's generator) behind the generator interface of `raypipe.flow.family`.

    make_tiny_cogvideox("/tmp/tiny-cog", TinyCogVideoXConfig(), seed=0)   # offline: a CogVideoXPipeline folder
    gen = CogVideoXFamily.load("/tmp/tiny-cog")                           # same call as for CogVideoX-2b
    v_hat = gen.predict_v(x_t, timestep, text)                            # native: v-prediction, timestep 0..999
    u_hat = gen.velocity(z_s, s, text)                                    # flow form (SPEC §1), s in [0, 1]

CogVideoX is a v-prediction diffusion model (diffusers' CogVideoXDDIMScheduler: scaled-linear betas rescaled to
zero terminal SNR, SNR shift 3 for the 2B). `predict_v` is what LiFT's loss trains (`prediction = "v"`,
`alphas_cumprod`); `velocity` converts it to the flow form (`raypipe.flow.diffusion`), so the Euler sampler,
Flow-DPO/RWR/SFT and reward guidance run on CogVideoX unchanged. Latents are [B, C, T', H', W'] as for Wan (the
transformer's [B, T', C, H', W'] layout stays inside this class), scaled by the VAE's `scaling_factor`.
Frames: 1 + 2k·temporal (an odd number of latent frames: the VAE decodes those back to the same length).
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
    tiny_t5_encoder,
    uint8_frames,
    vae_pixels,
)
from raypipe.flow.diffusion import flow_velocity_of_v, timestep_of, vp_of_flow_time
from raypipe.flow.pipeline_family import FAMILY_FILE, PipelineFamily


@dataclasses.dataclass
class TinyCogVideoXConfig:
    """A tiny random CogVideoX (the same diffusers/transformers classes as CogVideoX-2b)."""

    vae_channels: list[int] = dataclasses.field(default_factory=lambda: [8, 16, 16])  # 3 levels: spatial 4
    latent_channels: int = 4  # VAE latent channels
    vae_layers: int = 1  # VAE layers per block
    vae_groups: int = 4  # VAE group-norm groups
    temporal_compression: int = 4  # VAE frames per latent frame
    num_attention_heads: int = 2  # transformer heads
    attention_head_dim: int = 16  # per-head width
    num_layers: int = 2  # transformer blocks
    time_embed_dim: int = 32  # timestep embedding width
    text_dim: int = 32  # T5 width
    text_layers: int = 1  # T5 layers
    text_heads: int = 2  # T5 heads
    text_ff: int = 64  # T5 feed-forward width
    max_text_len: int = 16  # prompt tokens kept
    sample_frames: int = 9  # the clip the positional table is built for (others are computed on the fly)
    sample_height: int = 56  # pixel height the positional table is built for
    sample_width: int = 56  # pixel width the positional table is built for
    snr_shift_scale: float = 3.0  # the scheduler's SNR shift (2B: 3.0)
    scaling_factor: float = 1.0  # VAE latent scale (the 2B's VAE: 1.15258426)

    @classmethod
    def cogvideox_2b(cls) -> TinyCogVideoXConfig:
        """CogVideoX-2b's transformer and VAE shapes (random weights; GPU benchmarks). The T5 is a one-layer
        stand-in with T5-XXL's output width (4096); training reads cached text embeddings."""
        return cls(
            vae_channels=[128, 256, 256, 512],
            latent_channels=16,
            vae_layers=3,
            vae_groups=32,
            num_attention_heads=30,
            attention_head_dim=64,
            num_layers=30,
            time_embed_dim=512,
            text_dim=4096,
            text_layers=1,
            text_heads=32,
            text_ff=256,
            max_text_len=226,
            sample_frames=49,
            sample_height=480,
            sample_width=720,
            scaling_factor=1.15258426,
        )


def build_random_cogvideox(
    cfg: TinyCogVideoXConfig | None = None, seed: int = 0, dtype: str = "float32", device: str = "cpu"
):
    """A CogVideoXPipeline (tokenizer, T5 encoder, VAE, transformer, DDIM v-prediction scheduler), random weights."""
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    cfg = cfg or TinyCogVideoXConfig()
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer()
    levels = len(cfg.vae_channels)
    spatial = 2 ** (levels - 1)
    with torch.device(device):
        text_encoder = tiny_t5_encoder(T5EncoderModel, T5Config, tokenizer, cfg)
        vae = AutoencoderKLCogVideoX(
            down_block_types=("CogVideoXDownBlock3D",) * levels,
            up_block_types=("CogVideoXUpBlock3D",) * levels,
            block_out_channels=tuple(cfg.vae_channels),
            latent_channels=cfg.latent_channels,
            layers_per_block=cfg.vae_layers,
            norm_num_groups=cfg.vae_groups,
            temporal_compression_ratio=cfg.temporal_compression,
            sample_height=cfg.sample_height,
            sample_width=cfg.sample_width,
            scaling_factor=cfg.scaling_factor,
        )
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=cfg.num_attention_heads,
            attention_head_dim=cfg.attention_head_dim,
            in_channels=cfg.latent_channels,
            out_channels=cfg.latent_channels,
            time_embed_dim=cfg.time_embed_dim,
            text_embed_dim=cfg.text_dim,
            num_layers=cfg.num_layers,
            sample_width=cfg.sample_width // spatial,
            sample_height=cfg.sample_height // spatial,
            sample_frames=cfg.sample_frames,
            patch_size=2,
            temporal_compression_ratio=cfg.temporal_compression,
            max_text_seq_length=cfg.max_text_len,
        )
    scheduler = CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        snr_shift_scale=cfg.snr_shift_scale,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=True,
    )
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
    for model in (text_encoder, vae, transformer):
        cast_like_pretrained(model, getattr(torch, dtype))
    return pipe


def make_tiny_cogvideox(path: str | os.PathLike, cfg: TinyCogVideoXConfig | None = None, seed: int = 0) -> Path:
    """Write a tiny random CogVideoXPipeline folder to `path`."""
    cfg = cfg or TinyCogVideoXConfig()
    path = Path(path)
    build_random_cogvideox(cfg, seed).save_pretrained(path)
    (path / FAMILY_FILE).write_text(json.dumps({"family": "cogvideox", "max_text_len": cfg.max_text_len}))
    return path


class CogVideoXFamily(PipelineFamily):
    """CogVideoX through diffusers' CogVideoXPipeline components. Text encoder and VAE are frozen."""

    name = "cogvideox"
    title = "CogVideoX"
    pipeline_class = "CogVideoXPipeline"
    saved = ("max_text_len",)
    frame_factor = 2
    patch_factor = 2
    prediction = "v"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")

    def __init__(self, pipeline, max_text_len: int | None = None):
        self.pipeline = pipeline
        self.transformer = pipeline.transformer
        self.max_text_len = int(max_text_len or pipeline.transformer.config.max_text_seq_length)
        self.shift = 1.0  # flow-form training times are not shifted (the scheduler's SNR shift is in ᾱ already)
        for module in (pipeline.text_encoder, pipeline.vae):
            module.requires_grad_(False).eval()
        vae = pipeline.vae
        levels = len(vae.config.block_out_channels)
        self.spatial = 2 ** (levels - 1)
        self.temporal = int(vae.config.temporal_compression_ratio)
        self.scaling = float(vae.config.scaling_factor)
        self.alphas_cumprod = pipeline.scheduler.alphas_cumprod.float().clone()
        self.num_train_timesteps = int(pipeline.scheduler.config.num_train_timesteps)

    # --- frozen encoders ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """T5 embeddings [B, max_text_len, text_dim] (CogVideoX passes no attention mask to T5)."""
        embeds, _ = self.pipeline.encode_prompt(
            list(prompts), do_classifier_free_guidance=False, max_sequence_length=self.max_text_len, device=self.device
        )
        return embeds

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
    def predict_v(self, x_t: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, model=None) -> torch.Tensor:
        """v̂(x_t, τ, c) for diffusion latents x_t [B, C, T', H', W'] at timesteps τ [B] (0..N−1, may be
        fractional: diffusers embeds them sinusoidally in float32)."""
        model = model if model is not None else self.transformer
        dtype, device = compute_dtype_device(model)
        out = model(
            hidden_states=x_t.permute(0, 2, 1, 3, 4).to(device, dtype),
            encoder_hidden_states=text.to(device, dtype),
            timestep=timestep.to(device, torch.float32),
            return_dict=False,
        )[0]
        return out.permute(0, 2, 1, 3, 4).float()

    def velocity(self, z_s: torch.Tensor, s: torch.Tensor, text: torch.Tensor, model=None) -> torch.Tensor:
        """The flow-form velocity û = epŝ − x̂0 at flow time s (SPEC §1) from the v prediction at the matching
        diffusion point x_t = scale(s)·z_s, timestep τ(ᾱ(s)) (`raypipe.flow.diffusion`)."""
        device = compute_dtype_device(model if model is not None else self.transformer)[1]
        s = s.to(device)
        alpha_bar, scale = vp_of_flow_time(s)
        x_t = z_s.to(device).float() * scale.reshape(-1, *([1] * (z_s.dim() - 1)))
        tau = timestep_of(alpha_bar, self.alphas_cumprod.to(device))
        return flow_velocity_of_v(x_t, self.predict_v(x_t, tau, text, model), alpha_bar)
