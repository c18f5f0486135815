"""`raypipe synth`: a SynthPref set — H.264 mp4 pairs with known ground truth and `OUT/manifest.parquet`.

    raypipe synth --out synth-out pairs=256 seed=0

Defaults are the reference difficulty (DESIGN.md, SynthPref); the same seed gives the same data.
"""

from __future__ import annotations

import dataclasses
import json

from raypipe.config import SynthConfig, save_config
from raypipe.data.manifest import label_shares
from raypipe.video.synth import make_synthpref


@dataclasses.dataclass
class SynthJobConfig(SynthConfig):
    out: str = "synth-out"  # output folder: videos/ and manifest.parquet


def run(cfg: SynthJobConfig) -> dict:
    table = make_synthpref(cfg.out, cfg, progress=True)
    save_config(cfg, cfg.out)
    summary = {
        "out": cfg.out,
        "pairs": table.num_rows,
        "videos": 2 * table.num_rows,
        "label_shares": label_shares(table, ("VQ", "MQ", "TA")),
    }
    print(json.dumps(summary, indent=2))
    return summary
