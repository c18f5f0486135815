"""The generator behind a small interface, so the losses never see a model family.

    make_tiny_wan("/tmp/tiny-wan", TinyWanConfig(), seed=0)     # offline: a WanPipeline folder, random weights
    gen = WanFamily.load("/tmp/tiny-wan")                       # same call as for Wan2.1-T2V-1.3B-Diffusers
    text = gen.encode_prompts(["a red circle moving left"])     # frozen UMT5
    z0 = gen.encode_videos(frames)                              # frozen VAE, normalised latents [B, C, T', H', W']
    v_hat = gen.velocity(z_t, t, text)                          # the trainable transformer, t in [0, 1]

A family provides: `transformer` (the module LoRA attaches to), `lora_targets`, `shift` (training timestep shift),
`encode_prompts`, `encode_videos`, `decode_latents`, `velocity`, `pipeline`, and `frames_for(n)` (how many video
frames the VAE takes: Wan needs 1 + k·temporal_factor). Adding HunyuanVideo or LTX-Video means another class with
these members; nothing in `raypipe.flow.losses` or the training loop changes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch

from raypipe.flow.conditioning import (
    first_frame_velocity,
    pack_image,
    split_conditions,
    wan_inputs,
    with_image,
)

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


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
        text_encoder = UMT5EncoderModel(
            UMT5Config(
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
        )
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


class WanFamily:
    """Wan2.1 through diffusers' WanPipeline components. Text encoder and VAE are frozen."""

    name = "wan"
    prediction = "flow"  # the transformer predicts the flow velocity itself (CogVideoX: "v")
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")

    def __init__(self, pipeline, max_text_len: int = 226, shift: float | None = None):
        self.pipeline = pipeline
        self.transformer = pipeline.transformer
        boundary = pipeline.config.get("boundary_ratio")
        if getattr(pipeline, "transformer_2", None) is not None and boundary is not None:  # Wan2.2 A14B
            from raypipe.flow.wan22 import WanExperts

            self.transformer = WanExperts(pipeline.transformer, pipeline.transformer_2, boundary)
        self.max_text_len = max_text_len
        self.shift = float(shift if shift is not None else scheduler_shift(pipeline.scheduler.config))
        for module in (pipeline.text_encoder, pipeline.vae):
            module.requires_grad_(False).eval()
        vae = pipeline.vae
        self.temporal = int(vae.config.scale_factor_temporal)
        self.spatial = int(vae.config.scale_factor_spatial)
        self._mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)

    @classmethod
    def load(cls, path: str | os.PathLike, dtype: str = "float32", device: str = "cpu") -> WanFamily:
        """Load a WanPipeline folder (a local Wan2.1 Diffusers copy or `make_tiny_wan` output); nothing from a hub."""
        import json

        from diffusers import WanPipeline

        path = Path(path)
        if not (path / "model_index.json").exists():
            raise FileNotFoundError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        i2v = json.loads((path / "model_index.json").read_text()).get("_class_name") == "WanImageToVideoPipeline"
        pipeline_class = i2v_pipeline_class() if i2v else WanPipeline
        pipe = pipeline_class.from_pretrained(str(path), dtype=getattr(torch, dtype), local_files_only=True)
        extra = (
            json.loads((path / "raypipe_family.json").read_text()) if (path / "raypipe_family.json").exists() else {}
        )
        return cls(pipe.to(device), max_text_len=int(extra.get("max_text_len", 226)), shift=extra.get("shift"))

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """The pipeline folder plus raypipe_family.json (prompt length, time shift), which `load` reads back."""
        path = Path(path)
        self.pipeline.save_pretrained(path)
        family = {"family": "wan", "max_text_len": self.max_text_len, "shift": self.shift}
        (path / "raypipe_family.json").write_text(json.dumps(family))
        return path

    @property
    def device(self) -> torch.device:
        """Where the transformer lives (inputs of `velocity` are moved there; its output stays there)."""
        return compute_dtype_device(self.transformer)[1]

    # --- shapes ------------------------------------------------------------------------------------------
    def frames_for(self, n: int) -> int:
        """The largest frame count ≤ n the VAE takes (1 + k·temporal factor)."""
        return frames_up_to(n, self.temporal)

    def latent_shape(self, frames: int, height: int, width: int, check: bool = False) -> tuple[int, int, int, int]:
        """(C, T', H', W') of the latents of a `frames`x`height`x`width` clip. With `check`, a clip the VAE and
        the patch size cannot take (frames not 1 + k·temporal, sides not multiples of 2·spatial) is a
        ConfigError naming the rule."""
        if check and ((frames - 1) % self.temporal or height % (2 * self.spatial) or width % (2 * self.spatial)):
            from raypipe.config import ConfigError

            raise ConfigError(
                f"frames must be 1 + k·{self.temporal} and height/width multiples of "
                f"{2 * self.spatial}, got {frames}x{height}x{width}"
            )
        return (
            int(self.pipeline.vae.config.z_dim),
            1 + (frames - 1) // self.temporal,
            height // self.spatial,
            width // self.spatial,
        )

    # --- frozen encoders ---------------------------------------------------------------------------------
    @property
    def image_mode(self) -> str | None:
        """How a conditioning image enters (`raypipe.flow.conditioning`): "replace" (Wan2.2 TI2V: the first latent
        frame, per-token timesteps), "concat" (Wan2.1 I2V, Wan2.2 I2V-A14B: channels), None (text-to-video)."""
        if self.pipeline.config.get("expand_timesteps", False):
            return "replace"
        if int(self.transformer.config.in_channels) > int(self.pipeline.vae.config.z_dim):
            return "concat"
        return None

    @property
    def takes_image(self) -> bool:
        return self.image_mode is not None

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], images=None, frames: int | None = None) -> torch.Tensor:
        """UMT5 embeddings [B, max_text_len, text_dim] (padding zeroed, as WanPipeline does); with `images`
        (uint8 [B, H, W, 3], image-to-video) each one's conditioning packed in (`raypipe.flow.conditioning`);
        Wan2.1 I2V / Wan2.2 I2V-A14B encode the image followed by black frames, so they need the clip's `frames`."""
        embeds, _ = self.pipeline.encode_prompt(
            list(prompts),
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_text_len,
            device=self.transformer.device,
        )
        if images is None or self.image_mode != "concat":
            return with_image(self, embeds, images)
        return pack_image(embeds, *self._concat_condition(np.asarray(images), frames))

    def _concat_condition(self, images: np.ndarray, frames: int | None):
        """WanImageToVideoPipeline's conditioning latent (the image then frames − 1 black frames, VAE argmax,
        normalised) and, with an image encoder, its CLIP states (the penultimate layer)."""
        if frames is None or (frames - 1) % self.temporal:
            raise ValueError(f"this I2V generator conditions on the whole clip: frames must be 1 + k·{self.temporal}")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [B, H, W, 3], got {images.shape}")
        clip = np.zeros((len(images), frames, *images.shape[1:]), np.uint8)
        clip[:, 0] = images
        x = vae_pixels(clip, self.device)
        x[:, :, 1:] = 0.0  # black frames are 0 in [-1, 1], as the pipeline pads
        z = self.pipeline.vae.encode(x.to(self.pipeline.vae.dtype)).latent_dist.mode()
        cond = (z.float() - self._mean.to(z.device)) / self._std.to(z.device)
        states = None
        if getattr(self.pipeline, "image_encoder", None) is not None:
            from PIL import Image

            pictures = [Image.fromarray(i) for i in images]
            states = self.pipeline.encode_image(pictures, device=self.device).float()
        return cond, states

    @torch.no_grad()
    def encode_videos(self, frames: np.ndarray | torch.Tensor, sample: bool = False) -> torch.Tensor:
        """uint8 [B, T, H, W, 3] (T = 1 + k·temporal, H, W multiples of spatial·2) -> normalised latents."""
        x = vae_pixels(frames, self.transformer.device)
        dist = self.pipeline.vae.encode(x.to(self.pipeline.vae.dtype)).latent_dist
        z = dist.sample() if sample else dist.mode()
        return (z.float() - self._mean.to(z.device)) / self._std.to(z.device)

    @torch.no_grad()
    def decode_latents(self, z: torch.Tensor) -> np.ndarray:
        """Normalised latents -> uint8 [B, T, H, W, 3]."""
        z = z.float() * self._std.to(z.device) + self._mean.to(z.device)
        x = self.pipeline.vae.decode(z.to(self.pipeline.vae.dtype)).sample.float()
        return uint8_frames(x)

    # --- the trainable part ------------------------------------------------------------------------------
    def velocity(self, z_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, model=None) -> torch.Tensor:
        """v̂(z_t, t, c): diffusers takes timestep = 1000·t (SPEC §1). `model` defaults to the transformer
        (pass a peft-wrapped one for LoRA)."""
        model = model if model is not None else self.transformer
        dtype, device = compute_dtype_device(model)
        text, image, states = split_conditions(text, self.max_text_len)
        if image is None and self.image_mode == "concat":
            raise ValueError("this Wan I2V generator needs a conditioning image: encode_prompts(prompts, images=...)")
        if image is not None and self.image_mode is None:
            raise ValueError("this Wan generator is text-to-video only: its prompts carry no image")
        hidden, timestep = wan_inputs(z_t, t, image, self.transformer.config, device)
        extra = {} if states is None else {"encoder_hidden_states_image": states.to(device, dtype)}
        out = model(
            hidden_states=hidden.to(device, dtype),
            timestep=timestep,
            encoder_hidden_states=text.to(device, dtype),
            return_dict=False,
            **extra,
        )[0].float()
        if image is None or self.image_mode != "replace":
            return out
        return first_frame_velocity(out, z_t, t, image)
