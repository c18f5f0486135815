"""What the generator families built on one diffusers pipeline share (HunyuanVideo 1.0/1.5, LTX-Video, LTX-2,
CogVideoX; Wan's own loader in `flow/family.py` also handles its image-to-video and two-expert folders):

    class LTXFamily(PipelineFamily):
        name, title, pipeline_class = "ltx", "LTX-Video", "LTXPipeline"
        saved = ("max_text_len", "shift", "frame_rate")   # kept in raypipe_family.json, passed back to __init__

`load` reads a pipeline folder (nothing fetched from a hub) and its raypipe_family.json, `save_pretrained` writes
both; `latent_shape` / `frames_for` follow the VAE's compression (`spatial`, `temporal`, set by the family's
__init__) and the patches: frames 1 + k·(frame_factor·temporal), height and width multiples of `side`.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch

from raypipe.flow.common import compute_dtype_device, frames_up_to

FAMILY_FILE = "raypipe_family.json"
# pipeline components a family's `velocity` never reads (they encode prompts and videos, or decode)
_NOT_FOR_VELOCITY = (
    "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae", "audio_vae", "vocoder", "connectors",
    "image_encoder", "image_processor", "feature_extractor",
)  # fmt: skip


class PipelineFamily:
    name: str  # the family's name in `flow/families.py`
    title: str  # how messages name it
    pipeline_class: str  # the diffusers pipeline class of its folders
    saved: tuple[str, ...] = ("max_text_len",)  # attributes raypipe_family.json keeps (None: the constructor's own)
    frame_factor: int = 1  # latent frames per VAE step (CogVideoX: 2, its transformer takes an odd count)
    patch_factor: int = 1  # pixels per side of a token, in latent pixels (2x2 patches: 2)
    # set by each family's __init__
    pipeline = transformer = None
    spatial: int
    temporal: int

    @classmethod
    def load(cls, path: str | os.PathLike, dtype: str = "float32", device: str = "cpu"):
        """Load a pipeline folder of this family (a local copy of a released checkpoint, or our tiny builder's)."""
        import diffusers

        path = Path(path)
        if not (path / "model_index.json").exists():
            raise FileNotFoundError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        pipe = getattr(diffusers, cls.pipeline_class).from_pretrained(
            str(path), dtype=getattr(torch, dtype), local_files_only=True
        )
        extra = json.loads((path / FAMILY_FILE).read_text()) if (path / FAMILY_FILE).exists() else {}
        return cls(pipe.to(device), **{key: extra[key] for key in cls.saved if extra.get(key) is not None})

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """The pipeline folder plus raypipe_family.json (the family and `saved`), which `load` reads."""
        path = Path(path)
        self.pipeline.save_pretrained(path)
        family = {"family": self.name, **{key: getattr(self, key) for key in self.saved}}
        (path / FAMILY_FILE).write_text(json.dumps(family))
        return path

    @property
    def device(self) -> torch.device:
        return compute_dtype_device(self.transformer)[1]

    def velocity_view(self, transformer):
        """A copy of this family that keeps only what `velocity` reads, with `transformer` in place of the
        generator's (a latent reward's trunk): the pipeline's encoders, VAEs and tokenizers are left out, so holding
        the view does not hold the generator. The family itself is untouched."""
        view, pipe = copy.copy(self), copy.copy(self.pipeline)
        for name in _NOT_FOR_VELOCITY:
            if name in pipe.__dict__:
                pipe.__dict__[name] = None  # not setattr: a pipeline's __setattr__ would rewrite the shared config
        pipe.__dict__["transformer"] = transformer
        view.pipeline, view.transformer = pipe, transformer
        return view

    # --- shapes ------------------------------------------------------------------------------------------
    @property
    def side(self) -> int:
        """Height and width are multiples of this many pixels (VAE compression x patch)."""
        return self.patch_factor * self.spatial

    def frames_for(self, n: int) -> int:
        """The largest frame count ≤ n the VAE (and the transformer) take: 1 + k·frame_factor·temporal."""
        return frames_up_to(n, self.frame_factor * self.temporal)

    def latent_shape(self, frames: int, height: int, width: int, check: bool = False) -> tuple[int, int, int, int]:
        """(C, T', H', W'); with `check`, a clip the VAE and the patches cannot take is a ConfigError."""
        step, side = self.frame_factor * self.temporal, self.side
        if check and ((frames - 1) % step or height % side or width % side):
            from raypipe.config import ConfigError

            raise ConfigError(
                f"{self.title}: frames must be 1 + k·{step} and height/width multiples of {side}, "
                f"got {frames}x{height}x{width}"
            )
        c = int(self.pipeline.vae.config.latent_channels)
        return c, 1 + (frames - 1) // self.temporal, height // self.spatial, width // self.spatial
