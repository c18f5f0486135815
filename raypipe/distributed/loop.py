"""The named steps of a Ray Train worker loop. Every recipe's `train_func` reads top to bottom with them:

    progress = resume(engine)                                 # last checkpoint's DeepSpeed state + progress
    clock = TrainClock(progress, t.max_minutes)
    for epoch in range(progress["epoch"], t.epochs):
        for index, batch, wait_s in unconsumed(shard.iter_batches(...), progress, epoch):
            loss = ...                                        # the recipe's own batch -> loss
            require_finite(loss, step, epoch, index)          # all ranks agree, or all raise
            engine.backward(loss); engine.step()
            last = step >= total_steps or clock.out_of_time() # all ranks agree
            save_and_report(engine, progress, metrics, save_final if last else None)

`ray.train.report` is a barrier: every rank calls `save_and_report` at the same steps.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from raypipe.flow.losses import zero_loss  # noqa: F401 - the steps of a worker loop are all named here


def world_rank() -> int:
    import ray.train

    return ray.train.get_context().get_world_rank()


def say(line: str) -> None:
    """One line from a training worker to the console. Not `print`: in a Ray Train worker print goes both to the
    worker's stdout and to Ray Train's logger, so the driver would show it twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def new_progress() -> dict:
    """What rank 0 keeps in every checkpoint: position (step, epoch, batch within the epoch), the curve, resumes."""
    return {"step": 0, "epoch": 0, "batch_in_epoch": 0, "curve": [], "resumes": [], "train_s": 0.0}


def resume(engine) -> dict:
    """The progress of this attempt: fresh, or after a restart the last checkpoint's (its DeepSpeed state —
    model, optimizer, LR schedule — is loaded into `engine` on every rank). Records where the ranks run."""
    import ray.train

    from raypipe.distributed.trainer import worker_nodes

    progress = new_progress()
    latest = ray.train.get_checkpoint()
    if latest is not None:
        skipped = []
        for checkpoint in [latest, *older_checkpoints(latest)]:
            loaded = _load(engine, checkpoint)
            if all_ranks_true(loaded is not None):  # every rank loads the same checkpoint, or none does
                progress = loaded
                break
            skipped.append(checkpoint.path.rstrip("/").rsplit("/", 1)[-1])
        else:
            raise RuntimeError(
                f"no checkpoint under {latest.path.rsplit('/', 1)[0]} could be loaded ({skipped}); "
                "delete that folder to start over"
            )
        if skipped and world_rank() == 0:
            say(f"resume: unreadable checkpoints skipped (cut mid-write?): {skipped}")
        progress["resumes"].append(
            {
                "at_step": progress["step"],
                "engine_global_steps": engine.global_steps,
                "lr": engine.get_lr()[0],
                **({"skipped": skipped} if skipped else {}),
            }
        )
    progress["nodes"] = worker_nodes()  # where this attempt's ranks run (multi-node placement checks)
    return progress


def older_checkpoints(checkpoint) -> list:
    """The run's other checkpoints older than `checkpoint` (its siblings `checkpoint_<time>`), newest first, on
    whatever filesystem Ray Train stores them (local, NFS, an object store)."""
    import posixpath

    import pyarrow.fs as pafs
    import ray.train

    parent, name = posixpath.split(checkpoint.path.rstrip("/"))
    infos = checkpoint.filesystem.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    names = sorted(
        (i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")),
        reverse=True,
    )
    return [ray.train.Checkpoint(posixpath.join(parent, n), checkpoint.filesystem) for n in names if n < name]


def _load(engine, checkpoint) -> dict | None:
    """This rank's DeepSpeed state and the progress from `checkpoint`, or None when any of it cannot be read (a
    checkpoint cut mid-write: truncated or missing files)."""
    try:
        with checkpoint.as_directory() as d:
            path, _ = engine.load_checkpoint(d, tag="ds")
            if path is None:  # DeepSpeed found no state for this tag
                return None
            return json.loads((Path(d) / "progress.json").read_text())
    except Exception:  # noqa: BLE001 - torch, DeepSpeed, json and the filesystem each raise their own kinds
        return None


def unconsumed(batches, progress: dict, epoch: int):
    """(index in the epoch, batch, seconds waited for it) of every batch not consumed before a restart: the
    shard order is deterministic (preserve_order, seeded local shuffle), so skipping by position is exact."""
    skip = progress["batch_in_epoch"] if epoch == progress["epoch"] else 0
    batches = iter(batches)
    index = -1
    while True:
        t0 = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            return
        index += 1
        if index >= skip:
            yield index, batch, time.perf_counter() - t0


def noise_generator(seed: int, progress: dict) -> torch.Generator:
    """The CPU generator of a rank's noise and t draws: different on every rank, continued after a resume."""
    return torch.Generator().manual_seed(seed * 1000 + world_rank() * 7919 + progress["step"])


def all_ranks_true(flag: bool) -> bool:
    """True on every rank iff `flag` is true on every rank (one all-reduce), so all ranks take the same branch."""
    import torch.distributed as dist

    # NCCL reduces only GPU tensors; gloo only CPU ones.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([0 if flag else 1], device=device)
    dist.all_reduce(t)
    return int(t.item()) == 0


def require_finite(loss: torch.Tensor, step: int, epoch: int, index: int) -> None:
    """Raise on every rank when any rank's loss is not finite (no checkpoint of a diverged model is written)."""
    if not all_ranks_true(bool(torch.isfinite(loss))):
        raise RuntimeError(
            f"non-finite loss at step {step + 1} (epoch {epoch}, batch {index}); no checkpoint is "
            f"written. Lower train.lr or check the data."
        )


class TrainClock:
    """Training seconds summed over resumes; `out_of_time` ends the run on every rank at the same step."""

    def __init__(self, progress: dict, max_minutes: float | None):
        self.start, self.before = time.perf_counter(), float(progress.get("train_s", 0.0))
        self.budget_s = 60.0 * max_minutes if max_minutes else None

    def train_s(self) -> float:
        return self.before + time.perf_counter() - self.start

    def out_of_time(self) -> bool:
        return self.budget_s is not None and not all_ranks_true(self.train_s() < self.budget_s)


class Window:
    """Sums between two curve points: `add(loss=..., items=...)` per step, `mean(k)` per step, `rate(k)` per s."""

    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.steps = 0
        self.t0 = time.perf_counter()

    def add(self, **values: float) -> None:
        for k, v in values.items():
            self.sums[k] += float(v)

    def step(self, **values: float) -> None:
        """One optimizer step with its numbers (loss, items, stats)."""
        self.steps += 1
        self.add(**values)

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.t0, 1e-9)

    def mean(self, key: str) -> float:
        return self.sums[key] / max(1, self.steps)

    def rate(self, key: str) -> float:
        return self.sums[key] / self.elapsed()


def drop_error_rows(batch, progress: dict):
    """The batch without rows whose video failed to decode, counted in `progress["error_rows"]`."""
    from raypipe.data.tables import without_errors

    batch, n_bad = without_errors(batch)
    progress["error_rows"] = progress.get("error_rows", 0) + n_bad
    return batch


def throughput_point(window: Window, step: int, epoch: int, engine, train_s: float) -> dict:
    """A curve point: items/s per worker, lr, training seconds, and the per-step mean of every other number."""
    return {
        "step": step,
        "epoch": epoch,
        "items_per_s_per_worker": window.rate("items"),
        "lr": engine.get_lr()[0],
        "train_s": round(train_s, 1),
        **{k: window.mean(k) for k in window.sums if k != "items"},
    }


def record_point(progress: dict, point: dict, index: int, train_s: float, writer=None) -> None:
    """Append `point` to the curve (and TensorBoard) and remember the position reached: a restart resumes after
    batch `index` of `point["epoch"]` with `train_s` seconds of training spent."""
    progress["curve"].append(point)
    log_scalars(writer, point)
    progress.update(step=point["step"], epoch=point["epoch"], batch_in_epoch=index + 1, train_s=train_s)


def record_rows(progress: dict, epoch: int, batch, columns: tuple[str, ...]) -> None:
    """The first of `columns` the batch has, for every row consumed in `epoch` (`train.record_rows`: the resume
    tests check that nothing is consumed twice or skipped)."""
    key = next(k for k in columns if k in batch.column_names)
    progress.setdefault("rows", {}).setdefault(str(epoch), []).extend(batch.column(key).to_pylist())


def save_and_report(engine, progress: dict, metrics: dict, save_final=None) -> None:
    """A checkpoint of every rank's DeepSpeed state + rank 0's progress.json, reported to Ray Train (a barrier:
    all ranks call it at the same steps). With `save_final`, `save_final(dir / "final")` runs on EVERY rank first
    (ZeRO-3 gathers need all of them; it writes on rank 0) and the report is marked final."""
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        engine.save_checkpoint(d, tag="ds")
        if save_final is not None:
            save_final(Path(d) / "final")
        if world_rank() == 0:
            (Path(d) / "progress.json").write_text(json.dumps(progress, default=_json_default))
        ray.train.report(
            {**metrics, "final": save_final is not None}, checkpoint=ray.train.Checkpoint.from_directory(d)
        )


def tensorboard_writer(tensorboard_dir: str | None):
    """A TensorBoard writer on rank 0 when a folder is given, else None (`log_scalars` then does nothing)."""
    if not tensorboard_dir or world_rank() != 0:
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(tensorboard_dir)


def log_scalars(writer, point: dict) -> None:
    """A curve point's numbers (not step/epoch) as `train/<key>` scalars at its step."""
    if writer is None:
        return
    for k, v in point.items():
        if k not in ("step", "epoch") and isinstance(v, (int, float)):
            writer.add_scalar(f"train/{k}", v, point["step"])
    writer.flush()


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, float) and math.isnan(o):
        return None
    raise TypeError(type(o))
