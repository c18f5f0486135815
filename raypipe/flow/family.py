"""The generator behind a small interface, so the losses never see a model family.

    make_tiny_wan("/tmp/tiny-wan", TinyWanConfig(), seed=0)     # offline (flow/wan_build.py): random weights
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

import json
import os
from pathlib import Path

import numpy as np
import torch

from raypipe.flow.common import compute_dtype_device, frames_up_to, scheduler_shift, uint8_frames, vae_pixels
from raypipe.flow.conditioning import (
    first_frame_velocity,
    pack_image,
    split_conditions,
    wan_inputs,
    with_image,
)
from raypipe.flow.wan_build import i2v_pipeline_class


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
