"""Which generator family a pipeline folder is, and loading it: the one door recipes use.

    gen = load_family("gen/")     # WanFamily, CogVideoXFamily, HunyuanFamily, Hunyuan15Family, LTXFamily, LTX2Family
    path = make_tiny_generator("cogvideox", "/tmp/tiny-cog", seed=0)

A folder names its family in `raypipe_family.json` (written by our tiny builders and `save_pretrained`), else by
the pipeline class in diffusers' `model_index.json` (a downloaded Wan2.1 or CogVideoX-2b copy).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from raypipe.flow.cogvideox import CogVideoXFamily, TinyCogVideoXConfig, make_tiny_cogvideox
from raypipe.flow.family import WanFamily
from raypipe.flow.hunyuan import HunyuanFamily, TinyHunyuanConfig, make_tiny_hunyuan
from raypipe.flow.hunyuan15 import Hunyuan15Family, TinyHunyuan15Config, make_tiny_hunyuan15
from raypipe.flow.ltx import LTXFamily, TinyLTXConfig, make_tiny_ltx
from raypipe.flow.ltx2 import LTX2Family, TinyLTX2Config, make_tiny_ltx2
from raypipe.flow.wan_build import TinyWanConfig, make_tiny_wan

FAMILIES = {
    "wan": WanFamily,
    "cogvideox": CogVideoXFamily,
    "hunyuan": HunyuanFamily,
    "hunyuan15": Hunyuan15Family,
    "ltx": LTXFamily,
    "ltx2": LTX2Family,
}
PIPELINE_CLASSES = {
    "WanPipeline": "wan",
    "WanImageToVideoPipeline": "wan",
    "CogVideoXPipeline": "cogvideox",
    "HunyuanVideoPipeline": "hunyuan",
    "HunyuanVideo15Pipeline": "hunyuan15",
    "LTXPipeline": "ltx",
    "LTX2Pipeline": "ltx2",
}
TINY_CONFIGS = {
    "wan": TinyWanConfig,
    "cogvideox": TinyCogVideoXConfig,
    "hunyuan": TinyHunyuanConfig,
    "hunyuan15": TinyHunyuan15Config,
    "ltx": TinyLTXConfig,
    "ltx2": TinyLTX2Config,
}
BUILDERS = {
    "wan": make_tiny_wan,
    "cogvideox": make_tiny_cogvideox,
    "hunyuan": make_tiny_hunyuan,
    "hunyuan15": make_tiny_hunyuan15,
    "ltx": make_tiny_ltx,
    "ltx2": make_tiny_ltx2,
}


def family_of(path: str | os.PathLike) -> str:
    """The family name of a pipeline folder; a clear error for anything else."""
    path = Path(path)
    extra = path / "raypipe_family.json"
    if extra.exists():
        name = json.loads(extra.read_text()).get("family", "wan")
        if name in FAMILIES:
            return name
        raise ValueError(f"{path}: unknown generator family {name!r} (supported: {sorted(FAMILIES)})")
    index = path / "model_index.json"
    if not index.exists():
        raise FileNotFoundError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
    cls = json.loads(index.read_text()).get("_class_name")
    if cls not in PIPELINE_CLASSES:
        raise ValueError(f"{path}: pipeline class {cls!r} is not a supported family ({sorted(PIPELINE_CLASSES)})")
    return PIPELINE_CLASSES[cls]


def load_family(path: str | os.PathLike, dtype: str = "float32", device: str = "cpu", quiet: bool = False):
    """The family object of a pipeline folder (nothing is fetched from a hub). Its loading bars follow
    HF_HUB_DISABLE_PROGRESS_BARS (our Ray workers set it); `quiet` turns them off here too (a job with progress off)."""
    if quiet or os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").lower() in ("1", "true", "yes"):
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    return FAMILIES[family_of(path)].load(path, dtype=dtype, device=device)


def make_tiny_generator(family: str, path: str | os.PathLike, cfg=None, seed: int = 0) -> Path:
    """Write a tiny random pipeline of `family` to `path` (`cfg`: its Tiny*Config, default shape)."""
    if family not in FAMILIES:
        raise ValueError(f"generator family must be one of {sorted(FAMILIES)}, got {family!r}")
    return BUILDERS[family](path, cfg or TINY_CONFIGS[family](), seed)


def takes_image(path: str | os.PathLike) -> bool:
    """Whether the pipeline folder's generator takes a conditioning image (image-to-video), read from its configs
    without loading weights: Wan2.2 TI2V (`expand_timesteps`), Wan2.1 I2V / Wan2.2 I2V-A14B
    (`WanImageToVideoPipeline`), LTX-Video (one latent frame per token). LTX-2 here is text-to-video."""
    path = Path(path)
    family = family_of(path)
    if family == "wan":
        index = json.loads((path / "model_index.json").read_text())
        return bool(index.get("expand_timesteps")) or index.get("_class_name") == "WanImageToVideoPipeline"
    if family == "ltx":
        return int(json.loads((path / "transformer" / "config.json").read_text()).get("patch_size_t", 1)) == 1
    return False
