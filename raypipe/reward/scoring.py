"""Scoring videos with a VideoReward checkpoint: normalisation (SPEC §3.3) and Ray Data batch inference.

    stats = compute_norm_stats(val_scores, ["VQ", "MQ", "TA"])       # raw [N, D] -> norm_stats dict
    model.save_pretrained(ckpt, norm_stats=stats, extra={SAMPLING_FILE: dataclasses.asdict(sampling)})
    ds = score_videos(table, ckpt, sampling, concurrency=2)  # decode tasks -> scoring actors: + score_<DIM>, error

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

from raypipe.config import SamplingConfig, build_config
from raypipe.video.decode import VideoClip, decode_video

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


def read_tie_epsilon(checkpoint: str) -> dict[str, float]:
    """The checkpoint's per-dimension tie thresholds ε* ({} when it has none)."""
    path = Path(checkpoint) / TIE_EPSILON_FILE
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    bad = {k: v for k, v in data.items() if isinstance(v, bool) or not isinstance(v, (int, float))
           or not math.isfinite(v)}
    if not isinstance(data, dict) or bad:
        raise ValueError(f"{path}: expected {{DIM: finite number}}, got {data!r}")
    return {k: float(v) for k, v in data.items()}


def resolve_sampling(checkpoint: str, override: SamplingConfig | None) -> tuple[SamplingConfig, str]:
    """The sampling to score with, and where it came from.

    Rule: an explicit `override` (the job config's `sampling`, whole) wins; else the checkpoint's `sampling.json`
    (how it was trained — the model should see videos the same way); else `SamplingConfig()` defaults (fps 2).
    """
    if override is not None:
        return override, "config"
    path = Path(checkpoint) / SAMPLING_FILE
    if path.exists():
        return build_config(SamplingConfig, json.loads(path.read_text())), str(path)
    return SamplingConfig(), "default"


# --- what to score ----------------------------------------------------------------------------------------
def distinct_videos(table: pa.Table, uri_columns) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """Each distinct (uri, prompt) over the given URI columns once: (`video_id`, `uri`, `prompt` table; per URI
    column, the video_id of every row). A video shared by many pairs is decoded and scored once."""
    prompts = table.column("prompt").to_pylist()
    ids: dict[tuple[str, str], int] = {}
    per_column = {col: np.array([ids.setdefault((u, p), len(ids))
                                 for u, p in zip(table.column(col).to_pylist(), prompts)], dtype=np.int64)
                  for col in uri_columns}
    videos = pa.table({"video_id": pa.array(range(len(ids)), pa.int64()),
                       "uri": pa.array([k[0] for k in ids], pa.string()),
                       "prompt": pa.array([k[1] for k in ids], pa.string())})
    return videos, per_column


# --- Ray Data batch inference -------------------------------------------------------------------------------
def _replace_column(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    if name in table.column_names:
        table = table.drop_columns([name])
    return table.append_column(name, column)


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


def decode_block(batch: pa.Table, sampling: SamplingConfig) -> pa.Table:
    """A CPU task: decode the `uri` of every row -> `frames` (uint8 [T,H,W,3], empty on error), `error`,
    `error_message`. Other columns pass through. A bad video never raises."""
    from raypipe.data.pairs import frames_array

    frames, errors, messages = [], [], []
    for uri in batch.column("uri").to_pylist():
        result = decode_video(uri, sampling)
        if isinstance(result, VideoClip):
            frames.append(result.frames)
            errors.append(None)
            messages.append(None)
        else:
            frames.append(np.zeros((0, 0, 0, 3), np.uint8))
            errors.append(result.kind)
            messages.append(f"{result.kind}: {result.message}")
    batch = _replace_column(batch, "frames", frames_array(frames))
    batch = _replace_column(batch, "error", pa.array(errors, pa.string()))
    return _replace_column(batch, "error_message", pa.array(messages, pa.string()))


class FrameScorer:
    """Callable class for `map_batches(batch_format="pyarrow")` after `decode_block`: one model per actor, loaded
    once. Scores rows without an error in forward passes of at most `max_videos` videos and `token_budget` video
    tokens; adds `score_<DIM>` (float64, null on error rows) and `scored_on` (the Ray node id of the actor, for
    per-node accounting) and drops the `frames` column."""

    def __init__(self, checkpoint: str, device: str = "cpu", dtype: str | None = None, max_videos: int = 8,
                 token_budget: int | None = None):
        from raypipe.reward.model import VideoReward

        self.model = VideoReward.from_pretrained(checkpoint, dtype=dtype, device=device)
        self.dimensions = list(self.model.dimensions)
        self.max_videos, self.token_budget = max(1, int(max_videos)), token_budget
        self.forward_passes = 0
        import ray

        self.node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"

    def __call__(self, batch: pa.Table) -> pa.Table:
        from raypipe.data.pairs import column_frames

        frames = column_frames(batch, "frames")
        prompts = batch.column("prompt").to_pylist()
        good = [i for i, e in enumerate(batch.column("error").to_pylist()) if e is None]
        scores = np.full((batch.num_rows, len(self.dimensions)), np.nan)
        for group in plan_batches([video_tokens(frames[i]) for i in good], self.max_videos, self.token_budget):
            rows = [good[k] for k in group]
            scores[rows] = self.model.score([frames[i] for i in rows], [prompts[i] for i in rows]).numpy()
            self.forward_passes += 1
        valid = np.zeros(batch.num_rows, dtype=bool)
        valid[good] = True
        batch = batch.drop_columns(["frames"])
        for j, dim in enumerate(self.dimensions):
            batch = _replace_column(batch, f"score_{dim}", pa.array(scores[:, j], pa.float64(), mask=~valid))
        return _replace_column(batch, "scored_on", pa.array([self.node_id] * batch.num_rows, pa.string()))


def fit_actor_cpus(concurrency: int, actor_cpus: float, decode_cpus: float, total_cpus: float) -> float:
    """CPUs per scoring actor such that the pool leaves room for at least one decode task (a pool holding every
    CPU would starve decoding and stall the stream); never below 0.25."""
    room = (total_cpus - decode_cpus) / max(1, int(concurrency))
    return max(0.25, min(actor_cpus, room))


def score_videos(table: pa.Table, checkpoint: str, sampling: SamplingConfig, concurrency: int = 1,
                 batch_size: int = 8, num_gpus: float = 0, dtype: str | None = None, token_budget: int | None = None,
                 decode_rows: int = 32, actor_cpus: float = 0.5, decode_cpus: float = 0.75):
    """Lazy Ray Dataset: `table` (uri, prompt, any key columns) decoded by CPU tasks (up to `decode_rows` videos
    per task) and scored by a pool of `concurrency` actors, so decoding and scoring overlap. Output rows: the input
    columns + `error`, `error_message`, `score_<DIM>`.

    The checkpoint folder must be readable from every node (shared filesystem or the same path everywhere).
    Output order is not guaranteed: join on a key column.
    """
    import ray.data

    cpus = ray.cluster_resources().get("CPU", 1)
    if not num_gpus:
        actor_cpus = fit_actor_cpus(concurrency, actor_cpus, decode_cpus, cpus)
    # Big decode tasks amortise Ray's per-task overhead; a small input still gets ~4 tasks per CPU.
    step = max(1, min(int(decode_rows), -(-table.num_rows // max(1, int(4 * cpus)))))
    blocks = [table.slice(start, step) for start in range(0, table.num_rows, step)] or [table]
    device = "cuda" if num_gpus and num_gpus > 0 else "cpu"
    # Decode tasks retry (a node can die mid-decode; a bad video never raises). The differing remote args also
    # keep Ray Data from fusing decoding into the scoring actors (it fuses a task map into a following actor map
    # whose remote args match): fused, every actor would decode and then score, in turn, with no overlap.
    decoded = ray.data.from_arrow(blocks).map_batches(
        decode_block, fn_kwargs={"sampling": sampling}, batch_format="pyarrow", batch_size=None,
        zero_copy_batch=True, num_cpus=decode_cpus, max_retries=3)
    return decoded.map_batches(
        FrameScorer,
        fn_constructor_kwargs={"checkpoint": str(checkpoint), "device": device, "dtype": dtype,
                               "max_videos": batch_size, "token_budget": token_budget},
        compute=ray.data.ActorPoolStrategy(size=max(1, int(concurrency))), batch_size=max(1, int(batch_size)),
        num_gpus=num_gpus or None, num_cpus=actor_cpus, batch_format="pyarrow", zero_copy_batch=True,
    )


def sampling_dict(sampling: SamplingConfig) -> dict:
    """What a training job writes as `sampling.json` (via `save_pretrained(extra={SAMPLING_FILE: ...})`)."""
    return dataclasses.asdict(sampling)
