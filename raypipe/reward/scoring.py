"""Scoring videos with a VideoReward checkpoint: normalisation (SPEC §3.3) and Ray Data batch inference.

    stats = compute_norm_stats(val_scores, ["VQ", "MQ", "TA"])       # raw [N, D] -> norm_stats dict
    model.save_pretrained(ckpt, norm_stats=stats, extra={SAMPLING_FILE: dataclasses.asdict(sampling)})
    ds = score_videos(table, ckpt, sampling, concurrency=2)           # rows + score_<DIM>, error, error_message

Norm stats format (what `norm_stats.json` in a checkpoint holds; `compute_norm_stats` writes it,
`validate_norm_stats` checks it):

    {"mean": {"VQ": 0.12, "MQ": -0.4, "TA": 1.3}, "std": {"VQ": 0.9, "MQ": 1.1, "TA": 0.7}}

one finite float per dimension under each key, every std > 0. Normalised score `(r_d - mean_d) / std_d`;
`Overall = Σ_d normalised r_d`.

Sampling a checkpoint was trained with lives in `sampling.json` beside it (the fields of `SamplingConfig`); the
training job writes it through `save_pretrained(extra=...)`. `resolve_sampling` gives the rule eval uses.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from raypipe.config import SamplingConfig, _build
from raypipe.video.decode import VideoClip, decode_video

SAMPLING_FILE = "sampling.json"
NORM_STATS_FILE = "norm_stats.json"
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
    """The dimensions a checkpoint scores, from its reward_config.json (no weights loaded)."""
    path = Path(checkpoint) / "reward_config.json"
    if not path.exists():
        raise FileNotFoundError(f"{checkpoint} is not a VideoReward checkpoint (no reward_config.json)")
    return list(json.loads(path.read_text())["dimensions"])


def read_norm_stats(checkpoint: str, dimensions) -> dict | None:
    """The checkpoint's validated norm stats, or None when it has no norm_stats.json."""
    path = Path(checkpoint) / NORM_STATS_FILE
    if not path.exists():
        return None
    try:
        return validate_norm_stats(json.loads(path.read_text()), dimensions)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def resolve_sampling(checkpoint: str, override: SamplingConfig | None) -> tuple[SamplingConfig, str]:
    """The sampling to score with, and where it came from.

    Rule: an explicit `override` (the job config's `sampling`, whole) wins; else the checkpoint's `sampling.json`
    (how it was trained — the model should see videos the same way); else `SamplingConfig()` defaults (fps 2).
    """
    if override is not None:
        return override, "config"
    path = Path(checkpoint) / SAMPLING_FILE
    if path.exists():
        return _build(SamplingConfig, json.loads(path.read_text()), "sampling.json"), str(path)
    return SamplingConfig(), "default"


# --- Ray Data batch inference -------------------------------------------------------------------------------
def _replace_column(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    if name in table.column_names:
        table = table.drop_columns([name])
    return table.append_column(name, column)


class VideoScorer:
    """Callable class for `map_batches(batch_format="pyarrow")`: one model per actor, loaded once.

    Input rows need `uri` and `prompt`; all other columns pass through. Adds `score_<DIM>` (float64, null on
    error), `error` (null or a decode error kind) and `error_message`. A bad video never raises.
    """

    def __init__(self, checkpoint: str, sampling: SamplingConfig, device: str = "cpu", dtype: str | None = None):
        from raypipe.reward.model import VideoReward

        self.sampling = sampling
        self.model = VideoReward.from_pretrained(checkpoint, dtype=dtype, device=device)
        self.dimensions = list(self.model.dimensions)

    def __call__(self, batch: pa.Table) -> pa.Table:
        uris, prompts = batch.column("uri").to_pylist(), batch.column("prompt").to_pylist()
        errors: list[str | None] = [None] * len(uris)
        messages: list[str | None] = [None] * len(uris)
        good, frames = [], []
        for i, uri in enumerate(uris):
            result = decode_video(uri, self.sampling)
            if isinstance(result, VideoClip):
                good.append(i)
                frames.append(result.frames)
            else:
                errors[i], messages[i] = result.kind, f"{result.kind}: {result.message}"
        scores = np.full((len(uris), len(self.dimensions)), np.nan)
        if good:  # one forward pass for the whole batch: the point of batching on an accelerator
            scores[good] = self.model.score(frames, [prompts[i] for i in good]).numpy()
        valid = np.zeros(len(uris), dtype=bool)
        valid[good] = True
        for j, dim in enumerate(self.dimensions):
            batch = _replace_column(batch, f"score_{dim}", pa.array(scores[:, j], pa.float64(), mask=~valid))
        batch = _replace_column(batch, "error", pa.array(errors, pa.string()))
        return _replace_column(batch, "error_message", pa.array(messages, pa.string()))


def score_videos(table: pa.Table, checkpoint: str, sampling: SamplingConfig, concurrency: int = 1,
                 batch_size: int = 8, num_gpus: float = 0, dtype: str | None = None):
    """Lazy Ray Dataset: `table` (uri, prompt, any key columns) scored by a pool of `concurrency` actors.

    The checkpoint folder must be readable from every node (shared filesystem or the same path everywhere).
    Output order is not guaranteed: join on a key column.
    """
    import ray.data

    step = max(1, int(batch_size))
    # One block per batch, so every actor of the pool has work from the start.
    blocks = [table.slice(start, step) for start in range(0, table.num_rows, step)] or [table]
    device = "cuda" if num_gpus and num_gpus > 0 else "cpu"
    return ray.data.from_arrow(blocks).map_batches(
        VideoScorer,
        fn_constructor_kwargs={"checkpoint": str(checkpoint), "sampling": sampling, "device": device,
                               "dtype": dtype},
        compute=ray.data.ActorPoolStrategy(size=max(1, int(concurrency))), batch_size=step,
        num_gpus=num_gpus or None, batch_format="pyarrow",
    )


def sampling_dict(sampling: SamplingConfig) -> dict:
    """What a training job writes as `sampling.json` (via `save_pretrained(extra={SAMPLING_FILE: ...})`)."""
    return dataclasses.asdict(sampling)
