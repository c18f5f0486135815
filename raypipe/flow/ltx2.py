"""LTX-2 (its video; audio generation is out of scope) behind the generator interface of `raypipe.flow.family`.

    make_tiny_ltx2("/tmp/tiny-ltx2", TinyLTX2Config(), seed=0)    # offline: an LTX2Pipeline folder, random weights
    gen = LTX2Family.load("/tmp/tiny-ltx2")                       # same call as for Lightricks/LTX-2 (Diffusers)
    text = gen.encode_prompts(["a red circle moving left"])       # Gemma-3 states -> the text connectors, mask packed
    v_hat = gen.velocity(z_t, t, text)                             # flow matching, t in [0, 1]

LTX-2 is a flow model (x_t = (1 − t)·x0 + t·ε, the transformer predicts ε − x0 at timestep 1000·t) whose ONE
transformer generates a video and its audio together: every block runs a video stream and an audio stream, each with
self-attention and attention to its own text embedding, and then audio-to-video and video-to-audio cross-attention
between them. This family trains and samples the video only: no audio is encoded, trained, sampled or decoded (the
audio VAE and the vocoder stay in the folder, untouched, so it loads and saves as an LTX2Pipeline).

What `velocity` feeds the transformer is what `LTX2Pipeline.__call__` feeds it for text-to-video, except for the audio:
- hidden states: the latents packed into tokens [B, T'·H'·W', C] (`LTX2Pipeline._pack_latents`; 1 x 1 x 1 patches),
  the answer unpacked (`_unpack_latents`);
- prompt: `encode_prompt` (every Gemma-3 hidden state, embeddings included, stacked per token; the tokenizer pads on
  the left) and then the pipeline's `connectors` (per-layer masked normalisation, the projection, the video
  connector, whose learnable registers replace the padding): the video prompt embeddings and the connectors' mask
  (all ones in diffusers 0.42: the registers take the padded positions). The generator interface passes ONE tensor
  per prompt batch, so `encode_prompts` returns [B, L, D + 1], the mask as the last channel; L is the tokenizer length
  (`max_text_len`), fixed per config (`raypipe.flow.conditioning.empty_prompt_like` relies on it). LTX2Pipeline feeds
  the stripped prompt to Gemma as it is: no template or system text (its prompt enhancement is opt-in and not used);
- timestep = sigma = 1000·t in float32 (the pipeline passes its scheduler timestep as both; `sigma` is what LTX-2.3's
  prompt modulation reads), `use_cross_timestep=True` as the pipeline calls it;
- RoPE: `transformer.rope.prepare_video_coords(B, T', H', W', fps=frame_rate)` (the pipeline: frame_rate /
  motion_speed = 24 by default; `frame_rate` is kept in raypipe_family.json).

The audio, and why: the video stream reads the audio only through its audio-to-video cross-attention. An exact
video-only velocity of the joint model — the video velocity averaged over the audio the model would generate with
it — is not one forward pass. `velocity` passes `isolate_modalities=True`: every block skips both cross-modal
attentions, so the video output does not depend on the audio inputs at all, and the audio stream runs on one dummy
token of zeros (its output is discarded; its cost is nil). This is the model's video-only prediction as its makers use
it: ltx-core's block runs audio-to-video attention only when an audio modality is present, and Lightricks' trainer
trains video-only LoRAs (text_to_video, with_audio=False) by passing none; LTX2Pipeline itself evaluates this
prediction as the weak term of its modality guidance (modality_scale, 3 by default). The alternative — the joint
call with some made-up audio state (noise at the video's timestep, or at σ = 1) — would make v̂ depend on an audio
draw the interface has no place for (policy and reference would see different audio unless seeded alike), and would
condition the video on audio that does not belong to it. Consequence: `velocity` is not LTX2Pipeline's default
(joint) video prediction. Sampling with `raypipe.flow.sampler` on it equals LTX2Pipeline's video with its transformer
calls switched to isolate_modalities=True (tests/test_flow_ltx2.py), and a LoRA trained here adapts the video stream's
self- and text-attention (`lora_targets`); loaded into LTX2Pipeline (`LTX2Pipeline.load_lora_weights` reads it), it
acts on a model that attends to its co-generated audio again, a setting it was not trained in.

Latents: the VAE's mode, normalised per channel with `latents_mean` / `latents_std` × `scaling_factor`
(`LTX2Pipeline._normalize_latents`, as LTX2ImageToVideoPipeline encodes its condition); frames 1 + 8k and sides
multiples of 32 at real size. Shift: the scheduler's own — fixed, or with the released model's dynamic shifting
(base/max shift 0.95/2.05 over 1,024–4,096 tokens) exp(mu) at REFERENCE_CLIP (33 x 512 x 768: 1,920 tokens, 3.56);
the released scheduler's `shift_terminal` (the last sigma stretched to 0.1) has no counterpart in the scalar shift.
LoRA: `LTX2Pipeline` has a diffusers loader (`LTX2LoraLoaderMixin`); `raypipe.flow.lora` writes its format.
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
from raypipe.flow.ltx import reference_shift
from raypipe.flow.pipeline_family import FAMILY_FILE, PipelineFamily

REFERENCE_CLIP = (33, 512, 768)  # the clip the scalar training shift is taken at (LTX-2's default size, 33 frames)
AUDIO_TOKENS = 1  # the dummy audio sequence the (isolated) audio stream runs on


@dataclasses.dataclass
class TinyLTX2Config:
    """A tiny random LTX-2 (the same diffusers/transformers classes as the real one)."""

    vae_channels: list[int] = dataclasses.field(default_factory=lambda: [16])  # encoder levels
    vae_downsample: list[str] = dataclasses.field(default_factory=lambda: ["spatiotemporal"])  # per level
    vae_layers: list[int] = dataclasses.field(default_factory=lambda: [1, 1])  # per level, then the mid block
    vae_decoder_channels: list[int] = dataclasses.field(default_factory=lambda: [16])  # spatiotemporal upsamples
    vae_decoder_layers: list[int] = dataclasses.field(default_factory=lambda: [1, 1])  # mid block, then per level
    vae_patch: int = 4  # pixels folded into channels first (spatial 4 x 2 = 8, temporal 2)
    latent_channels: int = 8  # video latent channels
    num_attention_heads: int = 2  # video stream heads
    attention_head_dim: int = 16  # per-head width
    num_layers: int = 2  # blocks (each: a video and an audio stream)
    audio_heads: int = 2  # audio stream heads
    audio_head_dim: int = 8  # its per-head width
    audio_latent_channels: int = 2  # audio VAE latent channels
    mel_bins: int = 16  # mel bins (the audio VAE compresses them 4x: audio tokens are C·mel/4 wide)
    audio_vae_channels: int = 8  # audio VAE base width (= the packed audio width, its latent statistics' size)
    full_audio_decoders: bool = False  # the audio VAE's 2 residual blocks and the vocoder's released shapes
    text_dim: int = 32  # Gemma-3 width (= the connectors' width = the transformer's caption_channels)
    text_layers: int = 1  # Gemma-3 layers (the connectors take all layers + the embeddings: text_layers + 1)
    text_heads: int = 2  # Gemma-3 heads
    text_kv_heads: int = 1  # its key/value heads
    text_head_dim: int = 16  # its per-head width
    text_ff: int = 64  # its feed-forward width
    connector_heads: int = 2  # text connectors' heads (x connector_head_dim = text_dim)
    connector_head_dim: int = 16
    connector_layers: int = 1  # layers of each (video, audio) connector
    connector_registers: int = 8  # learnable registers (max_text_len must be a multiple)
    max_text_len: int = 16  # prompt tokens kept
    shift: float = 3.0  # the scheduler's fixed shift (the real model: dynamic, `dynamic_shift`)
    dynamic_shift: bool = False  # the released scheduler: exp(mu) with base/max shift 0.95/2.05
    frame_rate: float = 24.0  # the RoPE temporal scale's frame rate (LTX2Pipeline's default)

    @classmethod
    def ltx2(cls) -> TinyLTX2Config:
        """LTX-2's shapes (19B: 48 blocks, a video stream of 32 heads x 128 and an audio stream of 32 heads x 64 — the
        diffusers class defaults), its video VAE (128 channels, spatial 32, temporal 8), audio VAE and vocoder (class
        defaults), text connectors (30 heads x 128, two layers, 128 registers) and scheduler (dynamic shifting), random
        weights (GPU benchmarks). Gemma-3-12B is a one-layer stand-in of its width (3840): the connectors then take
        2 x 3840 features per token where the real ones take 49 x 3840; training reads cached text embeddings."""
        return cls(
            vae_channels=[256, 512, 1024, 2048],
            vae_downsample=["spatial", "temporal", "spatiotemporal", "spatiotemporal"],
            vae_layers=[4, 6, 6, 2, 2],
            vae_decoder_channels=[256, 512, 1024],
            vae_decoder_layers=[5, 5, 5, 5],
            latent_channels=128,
            num_attention_heads=32,
            attention_head_dim=128,
            num_layers=48,
            audio_heads=32,
            audio_head_dim=64,
            audio_latent_channels=8,
            mel_bins=64,
            audio_vae_channels=128,
            full_audio_decoders=True,
            text_dim=3840,
            text_layers=1,
            text_heads=16,
            text_kv_heads=8,
            text_head_dim=256,
            text_ff=256,
            connector_heads=30,
            connector_head_dim=128,
            connector_layers=2,
            connector_registers=128,
            max_text_len=1024,
            dynamic_shift=True,
        )


def vae_factors(cfg: TinyLTX2Config) -> tuple[int, int]:
    """(spatial, temporal) compression of the config's video VAE: the patch, then 2x per level that downsamples that
    axis (the class's own formula counts every level for both axes, so the real config states them)."""
    spatial = cfg.vae_patch * 2 ** sum(kind in ("spatial", "spatiotemporal") for kind in cfg.vae_downsample)
    temporal = 2 ** sum(kind in ("temporal", "spatiotemporal") for kind in cfg.vae_downsample)
    return spatial, temporal


def build_random_ltx2(cfg: TinyLTX2Config | None = None, seed: int = 0, dtype: str = "float32", device: str = "cpu"):
    """An LTX2Pipeline (Gemma-3 text encoder, text connectors, video and audio VAEs, joint transformer, vocoder, flow
    scheduler), random weights."""
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2Pipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors, LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    cfg = cfg or TinyLTX2Config()
    if cfg.connector_heads * cfg.connector_head_dim != cfg.text_dim:
        raise ValueError(f"connector heads x head dim must equal text_dim {cfg.text_dim}")
    if cfg.max_text_len % cfg.connector_registers:
        raise ValueError(f"max_text_len {cfg.max_text_len} must be a multiple of {cfg.connector_registers} registers")
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer()
    spatial, temporal = vae_factors(cfg)
    levels, up_levels = len(cfg.vae_channels), len(cfg.vae_decoder_channels)
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    audio_inner = cfg.audio_heads * cfg.audio_head_dim
    audio_mel = cfg.mel_bins // 4  # AutoencoderKLLTX2Audio.mel_compression_ratio
    if cfg.audio_latent_channels * audio_mel != cfg.audio_vae_channels:
        raise ValueError("audio_vae_channels must equal audio_latent_channels x mel_bins / 4 (its latent statistics)")
    with torch.device(device):
        text_encoder = Gemma3ForConditionalGeneration(
            Gemma3Config(
                text_config=Gemma3TextConfig(
                    vocab_size=len(tokenizer),
                    hidden_size=cfg.text_dim,
                    intermediate_size=cfg.text_ff,
                    num_hidden_layers=cfg.text_layers,
                    num_attention_heads=cfg.text_heads,
                    num_key_value_heads=cfg.text_kv_heads,
                    head_dim=cfg.text_head_dim,
                    query_pre_attn_scalar=cfg.text_head_dim,
                    max_position_embeddings=max(128, 2 * cfg.max_text_len),
                    sliding_window=cfg.max_text_len,
                    pad_token_id=0,
                    eos_token_id=1,
                    bos_token_id=None,
                ),
                # text-to-video never passes an image: a minimal vision tower (2 x 2 patches, 4 image tokens)
                vision_config=SiglipVisionConfig(
                    hidden_size=16,
                    intermediate_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    image_size=28,
                    patch_size=14,
                ),
                mm_tokens_per_image=4,
            )
        )
        connectors = LTX2TextConnectors(
            caption_channels=cfg.text_dim,
            text_proj_in_factor=cfg.text_layers + 1,
            video_connector_num_attention_heads=cfg.connector_heads,
            video_connector_attention_head_dim=cfg.connector_head_dim,
            video_connector_num_layers=cfg.connector_layers,
            video_connector_num_learnable_registers=cfg.connector_registers,
            audio_connector_num_attention_heads=cfg.connector_heads,
            audio_connector_attention_head_dim=cfg.connector_head_dim,
            audio_connector_num_layers=cfg.connector_layers,
            audio_connector_num_learnable_registers=cfg.connector_registers,
        )
        vae = AutoencoderKLLTX2Video(
            latent_channels=cfg.latent_channels,
            block_out_channels=tuple(cfg.vae_channels),
            down_block_types=("LTX2VideoDownBlock3D",) * levels,
            decoder_block_out_channels=tuple(cfg.vae_decoder_channels),
            layers_per_block=tuple(cfg.vae_layers),
            decoder_layers_per_block=tuple(cfg.vae_decoder_layers),
            spatio_temporal_scaling=(True,) * levels,
            decoder_spatio_temporal_scaling=(True,) * up_levels,
            decoder_inject_noise=(False,) * (up_levels + 1),
            downsample_type=tuple(cfg.vae_downsample),
            upsample_type=("spatiotemporal",) * up_levels,
            upsample_residual=(True,) * up_levels,
            upsample_factor=(2,) * up_levels,
            patch_size=cfg.vae_patch,
            spatial_compression_ratio=spatial,
            temporal_compression_ratio=temporal,
        )
        audio_vae = AutoencoderKLLTX2Audio(
            base_channels=cfg.audio_vae_channels,
            latent_channels=cfg.audio_latent_channels,
            mel_bins=cfg.mel_bins,
            num_res_blocks=2 if cfg.full_audio_decoders else 1,
        )
        if cfg.full_audio_decoders:
            vocoder = LTX2Vocoder(in_channels=2 * cfg.mel_bins)
        else:  # a minimal stand-in (never run: the family makes no audio)
            vocoder = LTX2Vocoder(
                in_channels=2 * cfg.mel_bins,  # stereo mel spectrograms
                hidden_channels=8,
                upsample_kernel_sizes=[4],
                upsample_factors=[2],
                resnet_kernel_sizes=[3],
                resnet_dilations=[[1]],
            )
        transformer = LTX2VideoTransformer3DModel(
            in_channels=cfg.latent_channels,
            out_channels=cfg.latent_channels,
            num_attention_heads=cfg.num_attention_heads,
            attention_head_dim=cfg.attention_head_dim,
            cross_attention_dim=inner,
            vae_scale_factors=(temporal, spatial, spatial),
            audio_in_channels=cfg.audio_latent_channels * audio_mel,
            audio_out_channels=cfg.audio_latent_channels * audio_mel,
            audio_num_attention_heads=cfg.audio_heads,
            audio_attention_head_dim=cfg.audio_head_dim,
            audio_cross_attention_dim=audio_inner,
            num_layers=cfg.num_layers,
            caption_channels=cfg.text_dim,
        )
    if cfg.dynamic_shift:
        scheduler = FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True,
            base_shift=0.95,
            max_shift=2.05,
            base_image_seq_len=1024,
            max_image_seq_len=4096,
            shift_terminal=0.1,
        )
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=cfg.shift)
    pipe = LTX2Pipeline(
        scheduler=scheduler,
        vae=vae,
        audio_vae=audio_vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        connectors=connectors,
        transformer=transformer,
        vocoder=vocoder,
    )
    for model in (text_encoder, connectors, vae, audio_vae, vocoder, transformer):
        cast_like_pretrained(model, getattr(torch, dtype))
    return pipe


def make_tiny_ltx2(path: str | os.PathLike, cfg: TinyLTX2Config | None = None, seed: int = 0) -> Path:
    """Write a tiny random LTX2Pipeline folder to `path`."""
    cfg = cfg or TinyLTX2Config()
    path = Path(path)
    build_random_ltx2(cfg, seed).save_pretrained(path)
    family = {"family": "ltx2", "max_text_len": cfg.max_text_len, "frame_rate": cfg.frame_rate}
    if not cfg.dynamic_shift:
        family["shift"] = cfg.shift
    (path / FAMILY_FILE).write_text(json.dumps(family))
    return path


def pack_text(embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Video prompt embeddings [B, L, D] + the connectors' mask [B, L] -> [B, L, D + 1] float32."""
    return torch.cat([embeds.float(), mask.to(embeds.device, torch.float32)[..., None]], dim=-1)


def unpack_text(text: torch.Tensor, text_dim: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `pack_text`: (embeddings [B, L, D], mask [B, L] long)."""
    if text.dim() != 3 or text.shape[2] != text_dim + 1 or text.shape[1] != rows:
        raise ValueError(f"LTX-2 text must be [B, {rows}, {text_dim + 1}] (encode_prompts), got {tuple(text.shape)}")
    return text[..., :text_dim], text[..., text_dim].round().long()


class LTX2Family(PipelineFamily):
    """LTX-2's video through diffusers' LTX2Pipeline components (see the module docstring for the audio). Text
    encoder, connectors and VAEs are frozen."""

    name = "ltx2"
    title = "LTX-2"
    pipeline_class = "LTX2Pipeline"
    saved = ("max_text_len", "shift", "frame_rate")
    prediction = "flow"
    # the video stream's self-attention (attn1) and text attention (attn2); ".attn1.to_q" does not match the audio
    # stream's audio_attn1, and the cross-modal attentions are off in `velocity`
    lora_targets = tuple(
        f"{attn}.{proj}" for attn in ("attn1", "attn2") for proj in ("to_q", "to_k", "to_v", "to_out.0")
    )
    takes_image = False  # text-to-video (LTX2ImageToVideoPipeline is another pipeline)
    image_mode = None

    def __init__(self, pipeline, max_text_len: int = 1024, shift: float | None = None, frame_rate: float = 24.0):
        self.pipeline = pipeline
        self.transformer = pipeline.transformer
        self.max_text_len = int(max_text_len)
        vae = pipeline.vae
        self.spatial = int(vae.spatial_compression_ratio)
        self.temporal = int(vae.temporal_compression_ratio)
        self.shift = (
            float(shift)
            if shift is not None
            else reference_shift(pipeline.scheduler.config, self.spatial, self.temporal, REFERENCE_CLIP)
        )
        self.frame_rate = float(frame_rate)
        for module in (pipeline.text_encoder, pipeline.connectors, vae, pipeline.audio_vae, pipeline.vocoder):
            module.requires_grad_(False).eval()
        self._mean = vae.latents_mean.float().view(1, -1, 1, 1, 1).clone()
        self._std = vae.latents_std.float().view(1, -1, 1, 1, 1).clone()
        self.scaling = float(vae.config.scaling_factor)
        config = pipeline.transformer.config
        # the connectors' outputs: caption_channels wide when the transformer projects them (LTX-2.0), else already
        # the streams' widths (LTX-2.3's per-modality projections)
        self.text_dim = int(
            config.caption_channels if config.use_prompt_embeddings else pipeline.connectors.config.video_hidden_dim
        )
        self.audio_text_dim = int(
            config.caption_channels if config.use_prompt_embeddings else pipeline.connectors.config.audio_hidden_dim
        )
        registers = pipeline.connectors.config.video_connector_num_learnable_registers
        if registers and self.max_text_len % int(registers):
            raise ValueError(
                f"max_text_len {self.max_text_len} must be a multiple of the connectors' {registers} registers"
            )

    # --- frozen encoders ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """[B, max_text_len, D + 1] float32: the video prompt embeddings LTX2Pipeline computes (Gemma-3 through its
        `encode_prompt`, then its `connectors`), the connectors' mask as the last channel."""
        pipe = self.pipeline
        embeds, mask, _, _ = pipe.encode_prompt(
            list(prompts), do_classifier_free_guidance=False, max_sequence_length=self.max_text_len, device=self.device
        )
        video, _, video_mask = pipe.connectors(
            embeds, mask, padding_side=getattr(pipe.tokenizer, "padding_side", "left")
        )
        return pack_text(video, video_mask)

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
        """Normalised latents -> uint8 [B, T, H, W, 3] (LTX2Pipeline's decode at decode_timestep 0, no noise)."""
        vae = self.pipeline.vae
        z = z.float() * self._std.to(z.device) / self.scaling + self._mean.to(z.device)
        timestep = torch.zeros(z.shape[0], device=z.device) if vae.config.timestep_conditioning else None
        x = vae.decode(z.to(vae.dtype), timestep, return_dict=False)[0].float()
        return uint8_frames(x)

    # --- the trainable part ------------------------------------------------------------------------------
    def video_coords(self, batch: int, frames: int, height: int, width: int, device=None) -> torch.Tensor:
        """The video tokens' RoPE coordinates for latents of T' x H' x W', as LTX2Pipeline prepares them."""
        return self.transformer.rope.prepare_video_coords(
            batch, frames, height, width, device or self.device, fps=self.frame_rate
        )

    def velocity(self, z_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, model=None) -> torch.Tensor:
        """v̂(z_t, t, c) at timestep 1000·t: the video stream with the cross-modal attention off (see the module
        docstring), its other inputs as LTX2Pipeline builds them. `model` defaults to the transformer (pass a
        peft-wrapped one or a DeepSpeed engine for training)."""
        model = model if model is not None else self.transformer
        dtype, device = compute_dtype_device(model)
        config = self.transformer.config
        p, pt = int(config.patch_size), int(config.patch_size_t)
        b, _, frames, height, width = z_t.shape
        embeds, mask = unpack_text(text.to(device), self.text_dim, self.max_text_len)
        timestep = (1000.0 * t).to(device, torch.float32).expand(b)
        f, h, w = frames // pt, height // p, width // p
        out = model(
            hidden_states=self.pipeline._pack_latents(z_t.to(device, dtype), p, pt).contiguous(),  # a dense layout
            audio_hidden_states=torch.zeros(b, AUDIO_TOKENS, int(config.audio_in_channels), device=device, dtype=dtype),
            encoder_hidden_states=embeds.to(dtype),
            audio_encoder_hidden_states=torch.zeros(b, 1, self.audio_text_dim, device=device, dtype=dtype),
            timestep=timestep,
            sigma=timestep,
            encoder_attention_mask=mask,
            num_frames=f,
            height=h,
            width=w,
            fps=self.frame_rate,
            audio_num_frames=AUDIO_TOKENS,
            video_coords=self.video_coords(b, f, h, w, device),
            isolate_modalities=True,
            use_cross_timestep=True,
            return_dict=False,
        )[0]
        return self.pipeline._unpack_latents(out, f, h, w, p, pt).float()
