"""LTX-Video behind the generator interface of `raypipe.flow.family` (the video model; LTX-2's audio is out of scope).

    make_tiny_ltx("/tmp/tiny-ltx", TinyLTXConfig(), seed=0)     # offline: an LTXPipeline folder
    gen = LTXFamily.load("/tmp/tiny-ltx")                       # same call as for Lightricks/LTX-Video
    v_hat = gen.velocity(z_t, t, text)                           # flow matching, t in [0, 1]

LTX-Video is a flow model (x_t = (1 − t)·x0 + t·ε, the transformer predicts ε − x0 at timestep 1000·t) whose
transformer takes the latents as a token sequence: `velocity` packs [B, C, T', H', W'] into [B, T'·H'·W', C]
(its patch sizes, 1 x 1 x 1 for LTX-Video 0.9) and unpacks the answer, passing the latent grid and the RoPE
interpolation scale (temporal ratio / frame rate, spatial ratio) as `LTXPipeline` does. Its T5 prompt needs its
attention mask: `encode_prompts` returns [B, L, D + 1] with the mask as the last channel. Latents are normalised
per channel with the VAE's `latents_mean` / `latents_std` × `scaling_factor` (`LTXPipeline._normalize_latents`).
The scheduler shifts its times dynamically with the sequence length; the family's one training `shift` is
exp(mu) at a reference clip (33 x 480 x 704 at real size), or what `raypipe_family.json` says.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
from raypipe.flow.conditioning import (
    condition_first_frame,
    first_frame_velocity,
    per_token_times,
    split_image,
    with_image,
)
from raypipe.flow.pipeline_family import FAMILY_FILE, PipelineFamily

REFERENCE_CLIP = (33, 480, 704)  # the clip the scalar training shift is taken at (LTX-Video's default size)


@dataclasses.dataclass
class TinyLTXConfig:
    """A tiny random LTX-Video (the same diffusers/transformers classes as the real one)."""

    vae_channels: list[int] = dataclasses.field(default_factory=lambda: [8, 16])  # one space-time downsample
    latent_channels: int = 8  # VAE latent channels
    vae_patch: int = 4  # pixels folded into channels first (spatial 4 x 2 = 8, temporal 2)
    num_attention_heads: int = 2  # transformer heads
    attention_head_dim: int = 16  # per-head width
    num_layers: int = 2  # transformer blocks
    text_dim: int = 32  # T5 width
    text_layers: int = 1  # T5 layers
    text_heads: int = 2  # T5 heads
    text_ff: int = 64  # T5 feed-forward width
    max_text_len: int = 16  # prompt tokens kept
    shift: float = 3.0  # the training / sampling time shift
    frame_rate: float = 25.0  # the RoPE temporal scale's frame rate (LTXPipeline's default)

    @classmethod
    def ltx_video(cls) -> TinyLTXConfig:
        """LTX-Video 0.9's transformer (28 blocks, 32 heads x 64, T5-XXL captions) and VAE (128 latent channels,
        spatial 32, temporal 8) shapes, random weights (GPU benchmarks); a one-layer T5 stand-in of width 4096."""
        return cls(
            vae_channels=[128, 256, 512, 512],
            latent_channels=128,
            num_attention_heads=32,
            attention_head_dim=64,
            num_layers=28,
            text_dim=4096,
            text_layers=1,
            text_heads=32,
            text_ff=256,
            max_text_len=128,
        )


def build_random_ltx(cfg: TinyLTXConfig | None = None, seed: int = 0, dtype: str = "float32", device: str = "cpu"):
    """An LTXPipeline (T5 encoder, VAE, transformer, flow scheduler), random weights."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    cfg = cfg or TinyLTXConfig()
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer()
    levels = len(cfg.vae_channels)
    scaling = tuple([True] * (levels - 1) + [False])  # every level but the last downsamples space and time
    with torch.device(device):
        text_encoder = tiny_t5_encoder(T5EncoderModel, T5Config, tokenizer, cfg)
        vae = AutoencoderKLLTXVideo(
            latent_channels=cfg.latent_channels,
            block_out_channels=tuple(cfg.vae_channels),
            down_block_types=("LTXVideoDownBlock3D",) * levels,
            decoder_block_out_channels=tuple(cfg.vae_channels),
            layers_per_block=(1,) * (levels + 1),
            decoder_layers_per_block=(1,) * (levels + 1),
            spatio_temporal_scaling=scaling,
            decoder_spatio_temporal_scaling=scaling,
            decoder_inject_noise=(False,) * (levels + 1),
            downsample_type=("conv",) * levels,
            upsample_residual=(False,) * levels,
            upsample_factor=(1,) * levels,
            patch_size=cfg.vae_patch,
            patch_size_t=1,
        )
        transformer = LTXVideoTransformer3DModel(
            in_channels=cfg.latent_channels,
            out_channels=cfg.latent_channels,
            num_attention_heads=cfg.num_attention_heads,
            attention_head_dim=cfg.attention_head_dim,
            cross_attention_dim=cfg.num_attention_heads * cfg.attention_head_dim,
            num_layers=cfg.num_layers,
            caption_channels=cfg.text_dim,
        )
    pipe = LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=cfg.shift),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    for model in (text_encoder, vae, transformer):
        cast_like_pretrained(model, getattr(torch, dtype))
    return pipe


def make_tiny_ltx(path: str | os.PathLike, cfg: TinyLTXConfig | None = None, seed: int = 0) -> Path:
    """Write a tiny random LTXPipeline folder to `path`."""
    cfg = cfg or TinyLTXConfig()
    path = Path(path)
    build_random_ltx(cfg, seed).save_pretrained(path)
    family = {"family": "ltx", "max_text_len": cfg.max_text_len, "shift": cfg.shift, "frame_rate": cfg.frame_rate}
    (path / FAMILY_FILE).write_text(json.dumps(family))
    return path


def reference_shift(
    scheduler_config, spatial: int, temporal: int, clip: tuple[int, int, int] = REFERENCE_CLIP
) -> float:
    """The scheduler's own shift: fixed, or with dynamic shifting exp(mu) at the token count of `clip` (frames,
    height, width; REFERENCE_CLIP for LTX-Video) — mu linear in the sequence length between base_shift and max_shift,
    as LTXPipeline and LTX2Pipeline compute it."""
    if not scheduler_config.get("use_dynamic_shifting", False):
        return float(scheduler_config.get("shift", 1.0))
    frames, height, width = clip
    seq = (1 + (frames - 1) // temporal) * (height // spatial) * (width // spatial)
    lo, hi = scheduler_config["base_image_seq_len"], scheduler_config["max_image_seq_len"]
    a, b = scheduler_config["base_shift"], scheduler_config["max_shift"]
    mu = a + (b - a) * (seq - lo) / (hi - lo)
    return math.exp(mu)


class LTXFamily(PipelineFamily):
    """LTX-Video through diffusers' LTXPipeline components. Text encoder and VAE are frozen."""

    name = "ltx"
    title = "LTX-Video"
    pipeline_class = "LTXPipeline"
    saved = ("max_text_len", "shift", "frame_rate")
    prediction = "flow"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")

    def __init__(self, pipeline, max_text_len: int = 128, shift: float | None = None, frame_rate: float = 25.0):
        self.pipeline = pipeline
        self.transformer = pipeline.transformer
        self.max_text_len = int(max_text_len)
        vae = pipeline.vae
        self.spatial = int(vae.spatial_compression_ratio)
        self.temporal = int(vae.temporal_compression_ratio)
        self.shift = (
            float(shift)
            if shift is not None
            else reference_shift(pipeline.scheduler.config, self.spatial, self.temporal)
        )
        self.frame_rate = float(frame_rate)
        for module in (pipeline.text_encoder, vae):
            module.requires_grad_(False).eval()
        self._mean = vae.latents_mean.float().view(1, -1, 1, 1, 1).clone()
        self._std = vae.latents_std.float().view(1, -1, 1, 1, 1).clone()
        self.scaling = float(vae.config.scaling_factor)
        self.text_dim = int(pipeline.transformer.config.caption_channels)

    # --- frozen encoders ---------------------------------------------------------------------------------
    @property
    def image_mode(self) -> str | None:
        """How an image conditions (`raypipe.flow.conditioning`): "replace", the first latent frame is the image's."""
        return "replace" if self.takes_image else None

    @property
    def takes_image(self) -> bool:
        """LTX-Video conditions on a first frame with the same transformer (LTXImageToVideoPipeline: the first
        latent frame replaced by the image's, its tokens at timestep 0); needs one latent frame per token."""
        return int(self.transformer.config.patch_size_t) == 1

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], images=None) -> torch.Tensor:
        """[B, L, D + 1]: the T5 states with the attention mask as the last channel; with `images` (uint8
        [B, H, W, 3], image-to-video) each one's latent packed in (`raypipe.flow.conditioning`)."""
        embeds, mask, _, _ = self.pipeline.encode_prompt(
            list(prompts), do_classifier_free_guidance=False, max_sequence_length=self.max_text_len, device=self.device
        )
        text = torch.cat([embeds.float(), mask.to(embeds.device, torch.float32)[..., None]], dim=-1)
        return with_image(self, text, images)

    @torch.no_grad()
    def encode_videos(self, frames: np.ndarray | torch.Tensor, sample: bool = False) -> torch.Tensor:
        """uint8 [B, T, H, W, 3] -> normalised latents [B, C, T', H', W'] (the mode unless `sample`)."""
        vae = self.pipeline.vae
        x = vae_pixels(frames, self.device)
        dist = vae.encode(x.to(vae.dtype)).latent_dist
        z = (dist.sample() if sample else dist.mode()).float()
        return (z - self._mean.to(z.device)) * self.scaling / self._std.to(z.device)

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> np.ndarray:
        vae = self.pipeline.vae
        z = z.float() * self._std.to(z.device) / self.scaling + self._mean.to(z.device)
        timestep = torch.zeros(z.shape[0], device=z.device) if vae.config.timestep_conditioning else None
        x = vae.decode(z.to(vae.dtype), timestep, return_dict=False)[0].float()
        return uint8_frames(x)

    # --- the trainable part ------------------------------------------------------------------------------
    def velocity(self, z_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, model=None) -> torch.Tensor:
        """v̂(z_t, t, c) at timestep 1000·t (float32): latents packed into tokens and back, as LTXPipeline does."""
        model = model if model is not None else self.transformer
        dtype, device = compute_dtype_device(model)
        config = self.transformer.config
        p, pt = int(config.patch_size), int(config.patch_size_t)
        b, _, frames, height, width = z_t.shape
        if text.dim() != 3 or text.shape[2] != self.text_dim + 1:
            raise ValueError(f"LTX text must be [B, L, {self.text_dim + 1}] (encode_prompts), got {tuple(text.shape)}")
        text, image = split_image(text.to(device), self.max_text_len)
        timestep = (1000.0 * t).to(device, torch.float32)
        hidden = z_t
        if image is not None:  # image-to-video: frame 0 is the image, clean (LTXImageToVideoPipeline)
            hidden = condition_first_frame(z_t, image)
            timestep = per_token_times(timestep, frames, (height // p) * (width // p))
        packed = self.pipeline._pack_latents(hidden.to(device, dtype), p, pt)
        out = model(
            hidden_states=packed,
            encoder_hidden_states=text[..., : self.text_dim].to(dtype),
            timestep=timestep,
            encoder_attention_mask=text[..., self.text_dim].round().long(),
            num_frames=frames // pt,
            height=height // p,
            width=width // p,
            rope_interpolation_scale=(self.temporal / self.frame_rate, self.spatial, self.spatial),
            return_dict=False,
        )[0]
        v = self.pipeline._unpack_latents(out, frames // pt, height // p, width // p, p, pt).float()
        return v if image is None else first_frame_velocity(v, z_t, t, image)
