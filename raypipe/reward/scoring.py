"""Scores of a VideoReward checkpoint, without Ray: normalisation (SPEC §3.3), the checkpoint's side files, which
videos to score, and how many fit a forward pass. The Ray Data scoring pool is `raypipe.distributed.scoring`.

    stats = compute_norm_stats(val_scores, ["VQ", "MQ", "TA"])       # raw [N, D] -> norm_stats dict
    model.save_pretrained(ckpt, norm_stats=stats, extra={SAMPLING_FILE: dataclasses.asdict(sampling)})

Norm stats format (what `norm_stats.json` in a checkpoint holds; `compute_norm_stats` writes it,
`validate_norm_stats` checks it):

    {"mean": {"VQ": 0.12, "MQ": -0.4, "TA": 1.3}, "std": {"VQ": 0.9, "MQ": 1.1, "TA": 0.7}}

one finite float per dimension under each key, every std > 0. Normalised score `(r_d - mean_d) / std_d`;
`Overall = Σ_d normalised r_d`.

Sampling a checkpoint was trained with lives in `sampling.json` beside it (the fields of `SamplingConfig`); the
training job writes it through `save_pretrained(extra=...)`. `resolve_sampling` gives the rule eval uses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from raypipe.config import SamplingConfig, build_config
from raypipe.reward import videoalign

SAMPLING_FILE = "sampling.json"
NORM_STATS_FILE = "norm_stats.json"
TIE_EPSILON_FILE = "tie_epsilon.json"  # {DIM: ε*}: |margin| ≤ ε* is a tie (from validation / eval-reward)
STD_FLOOR = 1e-6  # a dimension with constant scores would otherwise divide by zero


# --- normalisation (pure numpy) ------------------------------------------------------------------------------
def compute_norm_stats(scores: np.ndarray, dimensions) -> dict:
    """Per-dimension mean and (population) std of raw scores [N, D], ignoring NaN (error rows); std floored."""
    scores = np.asarray(scores, dtype=np.float64)
    dimensions = list(dimensions)
    if scores.ndim != 2 or scores.shape[1] != len(dimensions):
        raise ValueError(f"scores must be [N, {len(dimensions)}] for dimensions {dimensions}, got {scores.shape}")
    mean, std = {}, {}
    for j, dim in enumerate(dimensions):
        col = scores[:, j][np.isfinite(scores[:, j])]
        if col.size == 0:
            raise ValueError(f"no finite score for dimension {dim}: cannot compute norm stats")
        mean[dim] = float(col.mean())
        std[dim] = max(float(col.std()), STD_FLOOR)
    return {"mean": mean, "std": std}


def validate_norm_stats(norm_stats, dimensions) -> dict:
    """Return `norm_stats` if it has the documented shape for every dimension; ValueError naming the problem."""
    if not isinstance(norm_stats, dict) or set(norm_stats) < {"mean", "std"}:
        raise ValueError(f'norm stats must be {{"mean": {{DIM: float}}, "std": {{DIM: float}}}}, got {norm_stats!r}')
    for key in ("mean", "std"):
        part = norm_stats[key]
        if not isinstance(part, dict):
            raise ValueError(f"norm stats {key!r} must map dimension -> float, got {part!r}")
        for dim in dimensions:
            value = part.get(dim)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"norm stats {key!r} has no finite number for dimension {dim!r} (got {value!r})")
            if key == "std" and value <= 0:
                raise ValueError(f"norm stats std for {dim!r} must be > 0, got {value}")
    return norm_stats


def normalize(scores: np.ndarray, norm_stats: dict, dimensions) -> np.ndarray:
    """(r_d - mean_d) / std_d for raw scores [N, D] in `dimensions` order; NaN stays NaN."""
    validate_norm_stats(norm_stats, dimensions)
    mean = np.array([norm_stats["mean"][d] for d in dimensions], dtype=np.float64)
    std = np.array([norm_stats["std"][d] for d in dimensions], dtype=np.float64)
    return (np.asarray(scores, dtype=np.float64) - mean) / std


def overall(normalized: np.ndarray) -> np.ndarray:
    """Overall = Σ_d normalised r_d (SPEC §3.3), over the last axis."""
    return np.asarray(normalized, dtype=np.float64).sum(axis=-1)


# --- checkpoint side files (read in the driver, without loading weights) --------------------------------------
def checkpoint_dimensions(checkpoint: str) -> list[str]:
    """The dimensions a checkpoint scores, from its reward_config.json (no weights loaded); either layout."""
    if videoalign.is_videoalign(checkpoint):
        return list(videoalign.DIMENSIONS)
    path = Path(checkpoint) / "reward_config.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{checkpoint} is not a VideoReward checkpoint (no reward_config.json, nor the released layout's "
            f"model_config.json + checkpoint-<step>/)"
        )
    return list(json.loads(path.read_text())["dimensions"])


def read_norm_stats(checkpoint: str, dimensions) -> dict | None:
    """The checkpoint's validated norm stats, or None when it has none (released layout: its inference_config)."""
    if videoalign.is_videoalign(checkpoint):
        stats = videoalign.norm_stats(checkpoint)
        return None if stats is None else validate_norm_stats(stats, dimensions)
    path = Path(checkpoint) / NORM_STATS_FILE
    if not path.exists():
        return None
    try:
        return validate_norm_stats(json.loads(path.read_text()), dimensions)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def read_tie_epsilon(checkpoint: str) -> dict[str, float]:
    """The checkpoint's per-dimension tie thresholds ε* ({} when it has none)."""
    path = Path(checkpoint) / TIE_EPSILON_FILE
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    bad = {
        k: v for k, v in data.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
    }
    if not isinstance(data, dict) or bad:
        raise ValueError(f"{path}: expected {{DIM: finite number}}, got {data!r}")
    return {k: float(v) for k, v in data.items()}


def reward_options(checkpoint: str, base: str | None = None, template_file: str | None = None) -> dict:
    """`VideoReward.from_pretrained` keyword arguments for a job's `base` / `template_file` keys, checked in the
    driver: a checkpoint with the videoalign template fails here with one line when its text cannot be read
    (template_file, else $RAYPIPE_VIDEOALIGN_TEMPLATE, resolved now so every actor reads the same file)."""
    template_file = videoalign.template_path(template_file, check=checkpoint_template(checkpoint) == "videoalign")
    options = {"base": str(Path(base).resolve()) if base else None, "template_file": template_file}
    return {k: v for k, v in options.items() if v is not None}


def checkpoint_template(checkpoint: str) -> str:
    """The input template a checkpoint was trained with ("raypipe" or "videoalign")."""
    if videoalign.is_videoalign(checkpoint):
        return "videoalign"
    path = Path(checkpoint) / "reward_config.json"
    return json.loads(path.read_text()).get("template", "raypipe") if path.exists() else "raypipe"


def resolve_sampling(checkpoint: str, override: SamplingConfig | None) -> tuple[SamplingConfig, str]:
    """The sampling to score with, and where it came from.

    Rule: an explicit `override` (the job config's `sampling`, whole; a note when it drops the released
    model's qwen convention) wins; else the checkpoint's `sampling.json`
    (how it was trained — the model should see videos the same way); else `SamplingConfig()` defaults (fps 2).
    """
    if override is not None:
        if checkpoint_template(checkpoint) == "videoalign" and override.convention != "qwen":
            print(
                "note: this checkpoint was trained with qwen-vl-utils sampling, but the sampling section given "
                "replaces it whole (convention=raypipe): set sampling.convention=qwen (and min_pixels=100352, "
                "max_frames=768) to score as the official code does",
                flush=True,
            )
        return override, "config"
    if videoalign.is_videoalign(checkpoint):
        return videoalign.sampling(checkpoint), str(Path(checkpoint) / videoalign.CONFIG_FILE)
    path = Path(checkpoint) / SAMPLING_FILE
    if path.exists():
        return build_config(SamplingConfig, json.loads(path.read_text())), str(path)
    return SamplingConfig(), "default"


# --- what to score ----------------------------------------------------------------------------------------
class VideoIndex:
    """Distinct (uri, prompt) videos numbered 0, 1, ... in the order a walk over the rows first meets them (row by
    row; within a row, its URI columns in order), whatever size of batches the walk takes. A video shared by many
    pairs is decoded and scored once. Memory grows with distinct videos only, never with rows."""

    def __init__(self):
        self._ids: dict[tuple[str, str], int] = {}
        self._uris: list[str] = []
        self._prompts: list[str] = []

    def __len__(self) -> int:
        return len(self._uris)

    def ids(self, table: pa.Table, uri_columns) -> dict[str, np.ndarray]:
        """Per URI column, the video_id of every row of `table` (new videos get the next ids)."""
        import pyarrow.compute as pc

        n, k = table.num_rows, len(uri_columns)
        prompts = pc.fill_null(table.column("prompt"), "").combine_chunks()
        uris = pa.concat_arrays([pc.fill_null(table.column(c), "").combine_chunks() for c in uri_columns])
        # row-major order (row 0's columns, row 1's, ...): the numbering does not depend on the batch size
        order = pa.array((np.arange(k)[None, :] * n + np.arange(n)[:, None]).reshape(-1))
        uris, prompts = uris.take(order), pa.concat_arrays([prompts] * k).take(order)
        keys = pc.binary_join_element_wise(uris, prompts, "\0")
        distinct = pc.unique(keys)
        local = pc.index_in(keys, value_set=distinct).to_numpy()
        first = np.full(len(distinct), -1, np.int64)
        first[local[::-1]] = np.arange(len(local))[::-1]  # first row of each distinct key
        firsts = first.tolist()
        new_ids = []
        for u, p in zip(uris.take(pa.array(firsts)).to_pylist(), prompts.take(pa.array(firsts)).to_pylist()):
            vid = self._ids.get((u, p))
            if vid is None:
                vid = self._ids[(u, p)] = len(self._uris)
                self._uris.append(u)
                self._prompts.append(p)
            new_ids.append(vid)
        per_row = np.asarray(new_ids, np.int64)[local].reshape(n, k)
        return {c: per_row[:, j] for j, c in enumerate(uri_columns)}

    def table(self) -> pa.Table:
        """`video_id`, `uri`, `prompt` of every video met so far."""
        return pa.table(
            {
                "video_id": pa.array(range(len(self._uris)), pa.int64()),
                "uri": pa.array(self._uris, pa.string()),
                "prompt": pa.array(self._prompts, pa.string()),
            }
        )


def distinct_videos(table: pa.Table, uri_columns) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Each distinct (uri, prompt) over the given URI columns once: (`video_id`, `uri`, `prompt` table; per URI
    column, the video_id of every row) — `VideoIndex` over one table."""
    index = VideoIndex()
    per_column = index.ids(table, list(uri_columns))
    return index.table(), per_column


# --- batching by cost (what a forward pass may hold) ---------------------------------------------------------
def video_tokens(frames: np.ndarray) -> int:
    """Qwen2-VL merged video tokens for sampled frames [T, H, W, 3]: ceil(T/2)·(H/28)·(W/28) (the LM's cost)."""
    t, h, w = frames.shape[:3]
    return -(-t // 2) * (h // 28) * (w // 28)


def plan_batches(costs, max_items: int, budget: int | None = None) -> list[list[int]]:
    """Split items (in order) into forward passes of at most `max_items` items and, when `budget` is set, at most
    `budget` total cost; an item costlier than the budget alone goes in a pass of its own."""
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, cost in enumerate(costs):
        if current and (len(current) >= max_items or (budget is not None and total + cost > budget)):
            groups.append(current)
            current, total = [], 0
        current.append(i)
        total += cost
    if current:
        groups.append(current)
    return groups
