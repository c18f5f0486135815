"""Prompt sources every sampling job takes (`prompts=`): a number of seeded SynthPref prompts, a `.txt` (one per
line), a manifest with a `prompt` column, or the prompt text itself (several separated by "|")."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raypipe.config import ConfigError


def read_prompts(spec: str | int, seed: int) -> list[str]:
    """The prompts `spec` names (see the module docstring); the same `seed` gives the same SynthPref prompts."""
    from raypipe.data.manifest import read_table
    from raypipe.video.synth import COLORS, DIRECTIONS, SHAPES, make_prompt

    spec = str(spec)
    if spec.isdigit():
        rng = np.random.default_rng(seed)
        return [
            make_prompt(
                COLORS[rng.integers(len(COLORS))],
                SHAPES[rng.integers(len(SHAPES))],
                DIRECTIONS[rng.integers(len(DIRECTIONS))],
            )
            for _ in range(int(spec))
        ]
    path = Path(spec)
    if path.exists():
        if path.suffix == ".txt":
            return [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return [str(p) for p in read_table(str(path)).column("prompt").to_pylist()]
    if path.suffix.lower() in (".txt", ".csv", ".parquet"):
        raise ConfigError(f"prompts: file {spec!r} does not exist")
    prompts = [p.strip() for p in spec.split("|") if p.strip()]
    if not prompts:
        raise ConfigError("prompts: give a number, a file, or prompts separated by '|'")
    return prompts
