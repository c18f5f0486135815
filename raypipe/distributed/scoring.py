"""Ray Data batch inference with a VideoReward checkpoint: decode tasks feeding a pool of scoring actors.

    ds = score_videos(table, reward, sampling, concurrency=2)  # decode tasks -> scoring actors: + score_<DIM>

`reward` is the checkpoint folder; every output row also has `error` and `error_message`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raypipe.config import SamplingConfig
from raypipe.data.tables import column_frames, replace_column
from raypipe.distributed.decode import decode_stage, decode_videos_block
from raypipe.reward.scoring import plan_batches, video_tokens


class FrameScorer:
    """Callable class for `map_batches(batch_format="pyarrow")` after `decode_videos_block`: one model per actor, loaded
    once. Scores rows without an error in forward passes of at most `max_videos` videos and `token_budget` video
    tokens; adds `score_<DIM>` (float64, null on error rows) and `scored_on` (the Ray node id of the actor, for
    per-node accounting) and drops the `frames` column."""

    def __init__(
        self,
        reward: str,
        device: str = "cpu",
        dtype: str | None = None,
        max_videos: int = 8,
        token_budget: int | None = None,
        options: dict | None = None,
    ):
        from raypipe.reward.model import VideoReward

        self.model = VideoReward.from_pretrained(reward, dtype=dtype, device=device, **(options or {}))
        self.dimensions = list(self.model.dimensions)
        self.max_videos, self.token_budget = max(1, int(max_videos)), token_budget
        import ray

        self.node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"

    def __call__(self, batch: pa.Table) -> pa.Table:
        frames = column_frames(batch, "frames")
        prompts = batch.column("prompt").to_pylist()
        good = [i for i, e in enumerate(batch.column("error").to_pylist()) if e is None]
        scores = np.full((batch.num_rows, len(self.dimensions)), np.nan)
        for group in plan_batches([video_tokens(frames[i]) for i in good], self.max_videos, self.token_budget):
            rows = [good[k] for k in group]
            scores[rows] = self.model.score([frames[i] for i in rows], [prompts[i] for i in rows]).numpy()
        valid = np.zeros(batch.num_rows, dtype=bool)
        valid[good] = True
        batch = batch.drop_columns(["frames"])
        for j, dim in enumerate(self.dimensions):
            batch = replace_column(batch, f"score_{dim}", pa.array(scores[:, j], pa.float64(), mask=~valid))
        return replace_column(batch, "scored_on", pa.array([self.node_id] * batch.num_rows, pa.string()))


class FrameCritic:
    """Like `FrameScorer`, for a LiFT critic checkpoint: one generation per (video, dimension) in batches of at most
    `max_videos` videos; adds `rating_<DIM>` (Good/Normal/Bad) and `reason_<DIM>` (null on error rows), and turns a
    video whose answer does not start with a rating into an `unparsable_answer` error row (never a silent Good)."""

    def __init__(self, critic: str, device: str = "cpu", dtype: str | None = None, max_videos: int = 8, seed: int = 0):
        import torch

        from raypipe.critic.model import Critic

        self.model = Critic.from_pretrained(critic, dtype=dtype, device=device)
        self.dimensions = list(self.model.dimensions)
        self.max_videos = max(1, int(max_videos))
        self.generator = torch.Generator().manual_seed(seed)
        import ray

        self.node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"

    def __call__(self, batch: pa.Table) -> pa.Table:
        from raypipe.data.ratings import AnswerError, parse_answer

        frames = column_frames(batch, "frames")
        prompts = batch.column("prompt").to_pylist()
        errors, messages = batch.column("error").to_pylist(), batch.column("error_message").to_pylist()
        good = [i for i, e in enumerate(errors) if e is None]
        out = {f"{k}_{d}": [None] * batch.num_rows for d in self.dimensions for k in ("rating", "reason")}
        for start in range(0, len(good), self.max_videos):
            rows = good[start : start + self.max_videos]
            for dim in self.dimensions:
                answers = self.model.answer(
                    [frames[i] for i in rows], [prompts[i] for i in rows], [dim] * len(rows), self.generator
                )
                for i, text in zip(rows, answers):
                    try:
                        out[f"rating_{dim}"][i], out[f"reason_{dim}"][i] = parse_answer(text)
                    except AnswerError as e:
                        errors[i] = errors[i] or AnswerError.kind
                        messages[i] = (messages[i] + " | " if messages[i] else "") + f"{dim}: {e}"
        for i in range(batch.num_rows):
            if errors[i] is not None:
                for name in out:
                    out[name][i] = None
        batch = batch.drop_columns(["frames"])
        batch = replace_column(batch, "error", pa.array(errors, pa.string()))
        batch = replace_column(batch, "error_message", pa.array(messages, pa.string()))
        for name, values in out.items():
            batch = replace_column(batch, name, pa.array(values, pa.string()))
        return replace_column(batch, "scored_on", pa.array([self.node_id] * batch.num_rows, pa.string()))


def fit_actor_cpus(concurrency: int, actor_cpus: float, decode_cpus: float, total_cpus: float) -> float:
    """CPUs per scoring actor such that the pool leaves room for at least one decode task (a pool holding every
    CPU would starve decoding and stall the stream); never below 0.25."""
    room = (total_cpus - decode_cpus) / max(1, int(concurrency))
    return max(0.25, min(actor_cpus, room))


def score_videos(
    table: pa.Table,
    reward: str,
    sampling: SamplingConfig,
    concurrency: int = 1,
    batch: int = 8,
    num_gpus: float = 0,
    dtype: str | None = None,
    token_budget: int | None = None,
    decode_rows: int = 32,
    actor_cpus: float = 0.5,
    decode_cpus: float = 0.75,
    reward_options: dict | None = None,
    kind: str = "reward",
):
    """Lazy Ray Dataset: `table` (uri, prompt, any key columns) decoded by CPU tasks (up to `decode_rows` videos
    per task) and scored by a pool of `concurrency` actors, so decoding and scoring overlap. Output rows: the input
    columns + `error`, `error_message`, `score_<DIM>`. `reward_options`: `from_pretrained` keywords (`base`,
    `template_file`, from `reward.scoring.reward_options`). `kind="critic"`: `reward` is a LiFT critic checkpoint
    and the rows get `rating_<DIM>` / `reason_<DIM>` instead (`FrameCritic`).

    The `reward` checkpoint folder must be readable from every node (shared filesystem or the same path everywhere).
    Output order is not guaranteed: join on a key column.
    """
    import ray.data

    cpus = ray.cluster_resources().get("CPU", 1)
    if not num_gpus:
        actor_cpus = fit_actor_cpus(concurrency, actor_cpus, decode_cpus, cpus)
    # Big decode tasks amortise Ray's per-task overhead; a small input still gets ~4 tasks per CPU.
    step = max(1, min(int(decode_rows), -(-table.num_rows // max(1, int(4 * cpus)))))
    device = "cuda" if num_gpus and num_gpus > 0 else "cpu"
    # max_retries: decode tasks retry, and are not fused into the scoring actors (see decode_stage)
    decoded = decode_stage(table, decode_videos_block, {"sampling": sampling}, step, decode_cpus, max_retries=3)
    if kind == "critic":
        actor, kwargs = FrameCritic, {"critic": str(reward), "device": device, "dtype": dtype, "max_videos": batch}
    else:
        actor = FrameScorer
        kwargs = {"reward": str(reward), "device": device, "dtype": dtype, "max_videos": batch}
        kwargs.update(token_budget=token_budget, options=reward_options)
    return decoded.map_batches(
        actor,
        fn_constructor_kwargs=kwargs,
        compute=ray.data.ActorPoolStrategy(size=max(1, int(concurrency))),
        batch_size=max(1, int(batch)),
        num_gpus=num_gpus or None,
        num_cpus=actor_cpus,
        batch_format="pyarrow",
        zero_copy_batch=True,
    )
