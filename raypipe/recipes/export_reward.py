"""`raypipe export-reward`: a VideoReward checkpoint written in another layout.

    raypipe export-reward --checkpoint reward-out/final --format videoalign --out exported [base=/models/Qwen2-VL-2B]
    raypipe export-reward --checkpoint VideoReward --format raypipe --out converted base=/models/Qwen2-VL-2B-Instruct

`videoalign`: the official layout (`model_config.json` + `checkpoint-<step>/model.pth` in transformers 4.45 names,
the tokenizer, norm stats as `inference_config`), which VideoAlign's own `inference.py` loads; `model_name_or_path`
is `base` (default: the checkpoint's base). The model needs the three VQ/MQ/TA tokens; scores equal ours only when
it was trained with the released conventions (template=videoalign, positions=1d, sampling.convention=qwen) — the
summary lists any that differ. `raypipe`: our own layout (merged backbone, head, norm stats, sampling.json) from
either layout, e.g. to convert a released checkpoint once.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from raypipe.config import ConfigError, save_config
from raypipe.data.location import StagedOutput
from raypipe.reward.scoring import SAMPLING_FILE, resolve_sampling, reward_options

FORMATS = ("videoalign", "raypipe")


@dataclasses.dataclass
class ExportConfig:
    reward: str = ""  # the VideoReward checkpoint to export (--checkpoint): ours, or the released layout
    format: str = "videoalign"  # videoalign (the official layout) or raypipe (ours)
    out: str = "export-out"  # output folder, or an object-store prefix (s3://bucket/exported)
    base: str | None = None  # base model folder: written as model_name_or_path / read for a released checkpoint
    # the official prompt_template.py (or a text file) for the videoalign template; default $RAYPIPE_VIDEOALIGN_TEMPLATE
    template_file: str | None = None
    step: int = 0  # videoalign: the step in the checkpoint-<step> folder name
    dtype: str | None = None  # weights' dtype in the export (None: the checkpoint's; float32 for a released one)


def run(cfg: ExportConfig) -> dict:
    from raypipe.reward import videoalign
    from raypipe.reward.model import VideoReward

    if not cfg.reward:
        raise ConfigError("reward is required (--checkpoint FOLDER)")
    if cfg.format not in FORMATS:
        raise ConfigError(f"format must be one of {FORMATS}, got {cfg.format!r}")
    options = reward_options(cfg.reward, cfg.base if videoalign.is_videoalign(cfg.reward) else None, cfg.template_file)
    model = VideoReward.from_pretrained(cfg.reward, dtype=cfg.dtype, **options)
    sampling, _ = resolve_sampling(cfg.reward, None)
    stage = StagedOutput(cfg.out)  # a local folder, or staged locally and published to an object store
    out = stage.dir
    notes = []
    if cfg.format == "videoalign":
        base = cfg.base or model.cfg.name_or_path or str((Path(cfg.reward) / "backbone").resolve())
        notes = [f"scores will differ from raypipe's: {n}" for n in videoalign.convention_mismatches(model, sampling)]
        videoalign.export(model, out, base=base, sampling_cfg=sampling, step=cfg.step)
    else:
        model.save_pretrained(out, norm_stats=model.norm_stats, extra={SAMPLING_FILE: dataclasses.asdict(sampling)})
    save_config(cfg, out)
    stage.publish()
    summary = {"out": str(stage.location), "format": cfg.format, "dimensions": model.dimensions, "notes": notes}
    print(json.dumps(summary, indent=2))
    return summary
