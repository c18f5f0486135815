"""Resumable bench cells: a cell is one job whose result file says it finished (a recipe's summary.json, an
eval's report.json). A killed bench rerun with the same OUT reads finished cells back instead of running them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def cell(result: Path, run: Callable[[], dict]) -> dict:
    """The finished cell's result (`result`, written by the job itself), else `run()` — which must write it."""
    if result.exists():
        print(f"   done before: {result}", flush=True)
        return json.loads(result.read_text())
    out = run()
    if not result.exists():
        raise RuntimeError(f"the cell finished without writing {result}")
    return out


def parse_seeds(text) -> list[int]:
    """'0,1,2' -> [0, 1, 2] (duplicates refused: each seed is one independent repeat)."""
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds takes a comma list of integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds takes distinct integers, got {text!r}")
    return seeds
