"""HunyuanVideo 1.5 (text-to-video) behind the generator interface of `raypipe.flow.family`.

    make_tiny_hunyuan15("/tmp/tiny-hy15", TinyHunyuan15Config(), seed=0)   # offline: a HunyuanVideo15Pipeline folder
    gen = Hunyuan15Family.load("/tmp/tiny-hy15")                          # same call as for HunyuanVideo-1.5 T2V
    text = gen.encode_prompts(["a red circle moving left"])               # Qwen2.5-VL states + ByT5 glyphs, packed
    v_hat = gen.velocity(z_t, t, text)                                     # flow matching, t in [0, 1]

HunyuanVideo 1.5 is a flow model like Wan (x_t = (1 − t)·x0 + t·ε, the transformer predicts ε − x0 at timestep
1000·t); it has no guidance embedding (the pipeline runs real classifier-free guidance through its guider). What
`velocity` feeds the transformer is what `HunyuanVideo15Pipeline.__call__` feeds it for text-to-video:
- hidden states: [z_t, zeros (the conditioning latents), zeros (the mask channel)] along channels
  (`prepare_cond_latents_and_mask`: both are zero for T2V), so in_channels = 2·C + 1;
- image_embeds: zeros [B, vision_num_semantic_tokens (729), image_embed_dim] (the transformer sees they are all zero
  and masks them out);
- timestep: 1000·t in the transformer's dtype (as the pipeline casts it; the time embedding's linear layers take the
  timestep's dtype, so a float32 timestep cannot go into a bf16 model);
- two prompts: the Qwen2.5-VL text model's hidden states (the third-to-last layer, after the chat template with the
  pipeline's system message, the first `crop_start` tokens cut) with their attention mask, and ByT5's states of the
  quoted text in the prompt (zeros with a zero mask when the prompt quotes nothing) with theirs.
The generator interface passes ONE tensor per prompt batch, so `encode_prompts` packs them: [B, L + L2, W + 1]
with W = max(Qwen width, ByT5 width) — rows 0..L−1 the Qwen states, rows L..L+L2−1 the ByT5 states (zero-padded to
W), the attention mask as the last channel of every row. L and L2 are the pipeline's tokenizer lengths, so a config
always packs to the same number of rows (`raypipe.flow.conditioning.empty_prompt_like` relies on it).
- the prompt template: the real checkpoint's system message and crop are the installed diffusers pipeline's own
  (`system_message`, `prompt_template_encode_start_idx`, set by its __init__), read at run time; tiny random models
  (a word tokenizer whose chat template is the bare user prompt) store crop_start 0 in raypipe_family.json.
- LoRA: diffusers has no LoRA loader for HunyuanVideo15Pipeline; `raypipe.flow.lora` writes the transformer-only
  file every diffusers loader writes (`transformer.`-prefixed keys, the adapter config as metadata) and loads it
  with the transformer's own `load_lora_adapter`.
Latents: the VAE's mode × `scaling_factor` (1.03682 for the real VAE); frames 1 + 4k; 1 x 1 patches.
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
    scheduler_shift,
    uint8_frames,
    vae_pixels,
)
from raypipe.flow.pipeline_family import FAMILY_FILE, PipelineFamily

# tiny models: the chat template renders the user's prompt alone (then EOS, as the word tokenizer ends every text)
BARE_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ message['content'] }}{% endif %}"
    "{% endfor %}{{ eos_token }}"
)


@dataclasses.dataclass
class TinyHunyuan15Config:
    """A tiny random HunyuanVideo 1.5 T2V (the same diffusers/transformers classes as the real one)."""

    vae_channels: list[int] = dataclasses.field(default_factory=lambda: [16, 32, 32])  # 3 levels: spatial 4
    latent_channels: int = 4  # VAE latent channels (the transformer takes 2·C + 1)
    vae_layers: int = 1  # VAE layers per block
    spatial: int = 4  # the VAE's spatial compression (2 ** (levels − 1) at most)
    num_attention_heads: int = 2  # transformer heads
    attention_head_dim: int = 16  # per-head width (= the sum of rope_axes_dim)
    rope_axes_dim: list[int] = dataclasses.field(default_factory=lambda: [4, 6, 6])  # t, h, w rotary widths
    num_layers: int = 1  # dual-stream blocks
    num_refiner_layers: int = 1  # text refiner blocks
    text_dim: int = 32  # Qwen2.5-VL text width
    text_layers: int = 2  # its layers (the pipeline reads the third-to-last hidden state: >= 2)
    text_heads: int = 2  # its heads
    text_ff: int = 64  # its feed-forward width
    glyph_dim: int = 16  # ByT5 width (<= text_dim keeps the packed prompt as wide as the Qwen states)
    glyph_layers: int = 1  # ByT5 layers
    glyph_heads: int = 2  # ByT5 heads
    glyph_kv: int = 8  # ByT5 per-head width
    glyph_ff: int = 32  # ByT5 feed-forward width
    image_dim: int = 8  # the vision states' width (zeros for text-to-video)
    max_text_len: int = 16  # Qwen prompt tokens kept (the pipeline's tokenizer_max_length)
    max_glyph_len: int = 16  # ByT5 bytes kept (its tokenizer_2_max_length)
    target_size: int = 32  # the pipeline's default pixel size (its height/width when none is given)
    shift: float = 5.0  # the scheduler's flow shift
    guidance_scale: float = 6.0  # the guider's CFG scale (sampling only)
    scaling_factor: float = 1.03682  # VAE latent scale

    @classmethod
    def hunyuan_video_15(cls) -> TinyHunyuan15Config:
        """HunyuanVideo 1.5's transformer shapes (8.3B: 54 dual-stream blocks, 16 heads x 128, 1 x 1 patches; the
        diffusers class defaults) and VAE (32 channels, 16x space, 4x time), random weights (GPU benchmarks). The text
        encoders are one- or two-layer stand-ins with the real widths (Qwen2.5-VL-7B 3584, ByT5 1472); the 729
        vision states of width 1152 are zeros for text-to-video; training reads cached text embeddings."""
        return cls(
            vae_channels=[128, 256, 512, 1024, 1024],
            latent_channels=32,
            vae_layers=2,
            spatial=16,
            num_attention_heads=16,
            attention_head_dim=128,
            rope_axes_dim=[16, 56, 56],
            num_layers=54,
            num_refiner_layers=2,
            text_dim=3584,
            text_layers=2,
            text_heads=28,
            text_ff=256,
            glyph_dim=1472,
            glyph_layers=1,
            glyph_heads=6,
            glyph_kv=64,
            glyph_ff=256,
            image_dim=1152,
            max_text_len=1000,
            max_glyph_len=256,
            target_size=640,
        )


def build_random_hunyuan15(
    cfg: TinyHunyuan15Config | None = None, seed: int = 0, dtype: str = "float32", device: str = "cpu"
):
    """A HunyuanVideo15Pipeline (Qwen2.5-VL text model + ByT5 encoders, VAE, transformer, flow scheduler, CFG guider),
    random weights."""
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        ClassifierFreeGuidance,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    cfg = cfg or TinyHunyuan15Config()
    if sum(cfg.rope_axes_dim) != cfg.attention_head_dim:
        raise ValueError(f"rope_axes_dim {cfg.rope_axes_dim} must sum to attention_head_dim {cfg.attention_head_dim}")
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer()
    tokenizer.chat_template = BARE_CHAT_TEMPLATE
    tokenizer_2 = ByT5Tokenizer()  # byte-level: no vocabulary file
    half = cfg.text_dim // cfg.text_heads // 2  # Qwen2.5-VL's multimodal rope splits half a head over (t, h, w)
    mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    with torch.device(device):
        qwen = Qwen2_5_VLTextModel(
            Qwen2_5_VLTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=cfg.text_dim,
                intermediate_size=cfg.text_ff,
                num_hidden_layers=cfg.text_layers,
                num_attention_heads=cfg.text_heads,
                num_key_value_heads=cfg.text_heads,
                max_position_embeddings=max(128, 2 * cfg.max_text_len),
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope},
                pad_token_id=0,
                bos_token_id=None,
                eos_token_id=1,
            )
        )
        byt5 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_2),
                d_model=cfg.glyph_dim,
                d_kv=cfg.glyph_kv,
                d_ff=cfg.glyph_ff,
                num_layers=cfg.glyph_layers,
                num_heads=cfg.glyph_heads,
                feed_forward_proj="gated-gelu",
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        )
        vae = AutoencoderKLHunyuanVideo15(
            latent_channels=cfg.latent_channels,
            block_out_channels=tuple(cfg.vae_channels),
            layers_per_block=cfg.vae_layers,
            spatial_compression_ratio=cfg.spatial,
            temporal_compression_ratio=4,
            scaling_factor=cfg.scaling_factor,
        )
        transformer = HunyuanVideo15Transformer3DModel(
            in_channels=2 * cfg.latent_channels + 1,
            out_channels=cfg.latent_channels,
            num_attention_heads=cfg.num_attention_heads,
            attention_head_dim=cfg.attention_head_dim,
            num_layers=cfg.num_layers,
            num_refiner_layers=cfg.num_refiner_layers,
            patch_size=1,
            patch_size_t=1,
            text_embed_dim=cfg.text_dim,
            text_embed_2_dim=cfg.glyph_dim,
            image_embed_dim=cfg.image_dim,
            rope_axes_dim=tuple(cfg.rope_axes_dim),
            target_size=cfg.target_size,
            task_type="t2v",
        )
    pipe = HunyuanVideo15Pipeline(
        text_encoder=qwen,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=cfg.shift),
        text_encoder_2=byt5,
        tokenizer_2=tokenizer_2,
        guider=ClassifierFreeGuidance(guidance_scale=cfg.guidance_scale),
    )
    for model in (qwen, byt5, vae, transformer):
        cast_like_pretrained(model, getattr(torch, dtype))
    return pipe


def make_tiny_hunyuan15(path: str | os.PathLike, cfg: TinyHunyuan15Config | None = None, seed: int = 0) -> Path:
    """Write a tiny random HunyuanVideo15Pipeline folder to `path`."""
    cfg = cfg or TinyHunyuan15Config()
    path = Path(path)
    build_random_hunyuan15(cfg, seed).save_pretrained(path)
    family = {
        "family": "hunyuan15",
        "max_text_len": cfg.max_text_len,
        "max_glyph_len": cfg.max_glyph_len,
        "crop_start": 0,  # the bare chat template has no system prompt to cut
        "shift": cfg.shift,
    }
    (path / FAMILY_FILE).write_text(json.dumps(family))
    return path


class Hunyuan15Family(PipelineFamily):
    """HunyuanVideo 1.5 T2V through diffusers' HunyuanVideo15Pipeline components. Text encoders and VAE are frozen."""

    name = "hunyuan15"
    title = "HunyuanVideo 1.5"
    pipeline_class = "HunyuanVideo15Pipeline"
    saved = ("max_text_len", "max_glyph_len", "shift", "crop_start")
    prediction = "flow"
    # the dual-stream blocks' and the text refiner's attention (diffusers has no LoRA loader for this pipeline: the
    # projections HunyuanVideo 1.0's family adapts)
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    takes_image = False  # text-to-video (HunyuanVideo15ImageToVideoPipeline is another pipeline)

    def __init__(
        self,
        pipeline,
        max_text_len: int | None = None,
        max_glyph_len: int | None = None,
        shift: float | None = None,
        crop_start: int | None = None,
    ):
        """None keeps the pipeline's own value (its __init__'s: 1000 Qwen tokens, 256 ByT5 bytes, the template's
        crop); a given one is set on the pipeline too, so the pipeline's own encode_prompt and __call__ agree."""
        self.pipeline = pipeline
        self.transformer = pipeline.transformer
        if max_text_len is not None:
            pipeline.tokenizer_max_length = int(max_text_len)
        if max_glyph_len is not None:
            pipeline.tokenizer_2_max_length = int(max_glyph_len)
        if crop_start is not None:
            pipeline.prompt_template_encode_start_idx = int(crop_start)
        self.crop_start = crop_start  # None: the installed pipeline's (its chat template's) own
        self.max_text_len = int(pipeline.tokenizer_max_length)
        self.max_glyph_len = int(pipeline.tokenizer_2_max_length)
        self.shift = float(shift if shift is not None else scheduler_shift(pipeline.scheduler.config))
        for module in (pipeline.text_encoder, pipeline.text_encoder_2, pipeline.vae):
            module.requires_grad_(False).eval()
        vae = pipeline.vae
        self.spatial = int(vae.config.spatial_compression_ratio)
        self.temporal = int(vae.config.temporal_compression_ratio)
        self.scaling = float(vae.config.scaling_factor)
        config = pipeline.transformer.config
        self.text_dim = int(config.text_embed_dim)
        self.glyph_dim = int(config.text_embed_2_dim)
        self.image_dim = int(config.image_embed_dim)
        self.patch = int(config.patch_size)
        latent = int(vae.config.latent_channels)
        if int(config.in_channels) != 2 * latent + 1:
            raise ValueError(
                f"HunyuanVideo 1.5's transformer takes [latents, condition, mask] = {2 * latent + 1} channels, "
                f"this one {config.in_channels}"
            )

    @property
    def image_tokens(self) -> int:
        """How many (zero) vision states the pipeline passes for text-to-video (729)."""
        return int(self.pipeline.vision_num_semantic_tokens)

    @property
    def side(self) -> int:
        """Height and width are multiples of the VAE's compression x the transformer's patch."""
        return self.spatial * self.patch

    @property
    def text_rows(self) -> int:
        """The packed prompt's rows: the Qwen tokens then the ByT5 bytes."""
        return self.max_text_len + self.max_glyph_len

    # --- frozen encoders ---------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """[B, L + L2, W + 1] float32: the Qwen states, then the ByT5 glyph states, each row's mask last (see the
        module docstring). Through the pipeline's own encode_prompt (its chat template and crop)."""
        prompts = list(prompts)
        embeds, mask, embeds_2, mask_2 = self.pipeline.encode_prompt(
            prompts, device=self.device, batch_size=len(prompts)
        )
        return pack_text(embeds.float(), mask, embeds_2.float(), mask_2)

    @torch.no_grad()
    def encode_videos(self, frames: np.ndarray | torch.Tensor, sample: bool = False) -> torch.Tensor:
        """uint8 [B, T, H, W, 3] -> scaled latents [B, C, T', H', W'] (the distribution's mode unless `sample`)."""
        vae = self.pipeline.vae
        x = vae_pixels(frames, self.device).to(vae.dtype)
        out = []
        for clip in x.split(1):  # one video at a time: see `decode_latents`
            dist = vae.encode(clip).latent_dist
            out.append(dist.sample() if sample else dist.mode())
        return torch.cat(out).float() * self.scaling

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> np.ndarray:
        """Scaled latents -> uint8 [B, T, H, W, 3], one video at a time: the VAE's mid-block attention builds its
        causal mask as [B, S, S] against queries [B, 1, S, C], which only broadcasts for B = 1 (diffusers 0.42)."""
        vae = self.pipeline.vae
        z = (z.float() / self.scaling).to(vae.dtype)
        x = torch.cat([vae.decode(latent).sample.float() for latent in z.split(1)])
        return uint8_frames(x)

    # --- the trainable part ------------------------------------------------------------------------------
    def velocity(self, z_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, model=None) -> torch.Tensor:
        """v̂(z_t, t, c) at timestep 1000·t: the transformer's inputs as HunyuanVideo15Pipeline builds them for
        text-to-video (zero condition latents and mask channel, zero vision states)."""
        model = model if model is not None else self.transformer
        dtype, device = compute_dtype_device(model)
        embeds, mask, embeds_2, mask_2 = unpack_text(text.to(device), self.text_dim, self.glyph_dim, self.max_text_len)
        if embeds_2.shape[1] != self.max_glyph_len:
            raise ValueError(
                f"HunyuanVideo 1.5 text must have {self.text_rows} rows (encode_prompts), got {tuple(text.shape)}"
            )
        latents = z_t.to(device, dtype)
        n, _, frames, height, width = latents.shape
        hidden = torch.cat([latents, torch.zeros_like(latents), latents.new_zeros(n, 1, frames, height, width)], dim=1)
        out = model(
            hidden_states=hidden,
            image_embeds=torch.zeros(n, self.image_tokens, self.image_dim, device=device, dtype=dtype),
            timestep=(1000.0 * t).to(device, torch.float32).to(dtype),
            encoder_hidden_states=embeds.to(dtype),
            encoder_attention_mask=mask.to(dtype),
            encoder_hidden_states_2=embeds_2.to(dtype),
            encoder_attention_mask_2=mask_2.to(dtype),
            return_dict=False,
        )[0]
        return out.float()


def pack_text(embeds: torch.Tensor, mask: torch.Tensor, embeds_2: torch.Tensor, mask_2: torch.Tensor) -> torch.Tensor:
    """Qwen states [B, L, D] + mask [B, L], ByT5 states [B, L2, D2] + mask [B, L2] -> one [B, L + L2, W + 1] tensor
    (W = max(D, D2); states zero-padded to W, the mask in the last channel)."""
    b, length, d = embeds.shape
    length_2, d_2 = embeds_2.shape[1:]
    width = max(d, d_2)
    out = embeds.new_zeros((b, length + length_2, width + 1))
    out[:, :length, :d] = embeds
    out[:, length:, :d_2] = embeds_2.to(embeds.dtype)
    out[:, :length, width] = mask.to(embeds.dtype)
    out[:, length:, width] = mask_2.to(embeds.dtype)
    return out


def unpack_text(text: torch.Tensor, text_dim: int, glyph_dim: int, rows: int):
    """The inverse of `pack_text`: (Qwen states [B, L, D], mask [B, L] long, ByT5 states [B, L2, D2], mask [B, L2]
    long) with L = `rows`."""
    width = max(text_dim, glyph_dim)
    if text.dim() != 3 or text.shape[2] != width + 1 or text.shape[1] <= rows:
        raise ValueError(
            f"HunyuanVideo 1.5 text must be [B, {rows} + L2, {width + 1}] (encode_prompts), got {tuple(text.shape)}"
        )
    masks = text[:, :, width].round().long()
    return text[:, :rows, :text_dim], masks[:, :rows], text[:, rows:, :glyph_dim], masks[:, rows:]
