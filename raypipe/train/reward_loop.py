"""The Ray Train worker loop for VideoReward: plain PyTorch + a DeepSpeed engine, read top to bottom.

Per step: a batch of decoded pairs from this worker's Ray Data shard -> processor -> rewards of A and B in one
forward -> BT/BTT loss (masked per dimension) -> engine.backward/step. Every `checkpoint_every` steps all ranks
save their DeepSpeed state (model, optimizer, LR schedule) plus rank 0's progress (epoch, batch within the epoch,
the learning curve) and report it; a restarted worker group loads it and skips the batches of the epoch it had
already consumed (the shard order is deterministic: preserve_order + a seeded local shuffle).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def pairs_to_inputs(batch, processor, dimensions, with_mos: bool = False):
    """(model inputs for [A..., B...], targets, number of error rows skipped).

    targets: `y` [n, D] (+1 A, -1 B, 0 tie), `mask` [n, D] (labelled); with `with_mos` also `mos` [2n, D] and
    `mos_mask` for regression on the SPEC §2.1 `MOS_<side>_<DIM>` columns (A rows first, then B)."""
    import pyarrow.compute as pc

    from raypipe.data.pairs import frames_of, split_errors

    good, bad = split_errors(batch)
    frames_a, frames_b = frames_of(good, "A"), frames_of(good, "B")
    prompts = good.column("prompt").to_pylist()
    y = torch.zeros((good.num_rows, len(dimensions)), dtype=torch.long)
    mask = torch.zeros_like(y, dtype=torch.bool)
    for j, dim in enumerate(dimensions):
        col = good.column(f"y_{dim}")
        valid = pc.is_valid(col).to_numpy(zero_copy_only=False)
        vals = pc.fill_null(col, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        y[:, j] = torch.from_numpy(vals)
        mask[:, j] = torch.from_numpy(valid)
    targets = {"y": y, "mask": mask}
    if with_mos:
        mos = torch.full((2 * good.num_rows, len(dimensions)), float("nan"))
        for k, side in enumerate("AB"):
            for j, dim in enumerate(dimensions):
                name = f"MOS_{side}_{dim}"
                if name in good.column_names:
                    values = good.column(name).cast("float64").to_numpy(zero_copy_only=False)
                    mos[k * good.num_rows:(k + 1) * good.num_rows, j] = torch.from_numpy(values.astype(np.float32))
        targets["mos_mask"] = torch.isfinite(mos)
        targets["mos"] = torch.nan_to_num(mos)
    inputs = processor(frames_a + frames_b, prompts + prompts) if good.num_rows else None
    return inputs, targets, bad.num_rows


def deepspeed_config(t, total_steps: int, bf16: bool) -> dict:
    from raypipe.train.common import deepspeed_config as shared

    return shared(t, total_steps, bf16, micro_batch=t.batch_pairs)


def _loss(kind, rewards, targets, theta, device, weights=None):
    from raypipe.reward.losses import regression_loss, reward_loss

    if kind == "regression":
        return regression_loss(rewards, targets["mos"].to(device), targets["mos_mask"].to(device), weights)
    n = targets["y"].shape[0]
    return reward_loss(kind, rewards[:n], rewards[n:], targets["y"].to(device), targets["mask"].to(device), theta,
                       weights)


def _to(inputs, device):
    return {k: v.to(device) for k, v in inputs.items()}


def evaluate(engine, model, val_batches, dimensions, device):
    """Margins and labels on this rank's validation shard, gathered from all ranks; plus raw scores."""
    import torch.distributed as dist

    engine.eval()
    margins, labels, masks, scores = [], [], [], []
    with torch.no_grad():
        for inputs, targets in val_batches:
            y, mask = targets["y"], targets["mask"]
            r = engine(_to(inputs, device)).float().cpu()
            n = y.shape[0]
            margins.append(r[:n] - r[n:])
            labels.append(y), masks.append(mask), scores.append(r)
    engine.train()
    local = [torch.cat(x).numpy() if x else np.zeros((0, len(dimensions))) for x in (margins, labels, masks, scores)]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return [np.concatenate([g[i] for g in gathered]) for i in range(4)]


def validation_metrics(margins, labels, masks, dimensions) -> dict:
    from raypipe.reward.metrics import pairwise_report

    out = {}
    for j, dim in enumerate(dimensions):
        sel = masks[:, j].astype(bool)
        out[dim] = pairwise_report(labels[sel, j], margins[sel, j])
    return out


def train_loop_per_worker(config: dict) -> None:
    import deepspeed
    import ray.train

    from raypipe.config import build_config
    from raypipe.reward.model import VideoReward
    from raypipe.train.common import all_ranks_true, worker_nodes
    from raypipe.reward.scoring import compute_norm_stats
    from raypipe.train.reward_config import RewardTrainConfig

    cfg = build_config(RewardTrainConfig, config["cfg"])
    t = cfg.train
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(t.seed)  # identical init on every rank (DeepSpeed also broadcasts rank 0's weights)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    device = torch.device("cuda", torch.cuda.current_device()) if t.use_gpu else torch.device("cpu")
    model = VideoReward.build(cfg.model)
    if t.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    dims = model.dimensions
    weights = None if not t.dim_weights else torch.tensor([float(t.dim_weights.get(d, 1.0)) for d in dims])
    deepspeed.init_distributed(dist_backend="nccl" if t.use_gpu else "gloo")
    total_steps = config["total_steps"]
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(t, total_steps, bf16=t.use_gpu and cfg.model.dtype == "bfloat16"))

    progress = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "curve": [], "resumes": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(d, tag="ds")
            progress = json.loads((Path(d) / "progress.json").read_text())
        progress["resumes"].append({"at_step": progress["step"], "engine_global_steps": engine.global_steps,
                                    "lr": engine.get_lr()[0]})
    progress["nodes"] = worker_nodes()  # where this attempt's ranks run (multi-node placement checks)

    val_batches = []
    for batch in ray.train.get_dataset_shard("val").iter_batches(batch_size=t.batch_pairs, batch_format="pyarrow"):
        inputs, targets, _ = pairs_to_inputs(batch, model.processor, dims)
        if inputs is not None:
            val_batches.append((inputs, targets))

    shard = ray.train.get_dataset_shard("train")
    step = progress["step"]
    window = _new_window()
    attempt_t0, spent_before = time.perf_counter(), float(progress.get("train_s", 0.0))
    budget_s = 60.0 * t.max_minutes if t.max_minutes else None
    done = step >= total_steps
    for epoch in range(progress["epoch"], t.epochs):
        if done:
            break
        skip = progress["batch_in_epoch"] if epoch == progress["epoch"] else 0
        batches = iter(shard.iter_batches(batch_size=t.batch_pairs, batch_format="pyarrow",
                                          prefetch_batches=t.prefetch_batches,
                                          local_shuffle_buffer_size=t.shuffle_buffer or None,
                                          local_shuffle_seed=t.seed * 1000 + epoch))
        index = -1
        while True:
            wait0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            index += 1
            if index < skip:
                continue  # consumed before the restart
            window["wait"] += time.perf_counter() - wait0
            prep0 = time.perf_counter()
            inputs, targets, n_err = pairs_to_inputs(batch, model.processor, dims, with_mos=t.loss == "regression")
            window["errors"] += n_err
            if t.record_rows and rank == 0:
                progress.setdefault("rows", {}).setdefault(str(epoch), []).extend(batch.column("row_id").to_pylist())
            if inputs is None:  # every row of this batch failed to decode: a zero step keeps ranks in lockstep
                inputs = model.processor([np.zeros((4, 56, 56, 3), np.uint8)] * 2, ["", ""])
                none = torch.zeros((1, len(dims)), dtype=bool)
                targets = {"y": none.long(), "mask": none, "mos": torch.zeros((2, len(dims))),
                           "mos_mask": torch.zeros((2, len(dims)), dtype=bool)}
            fwd0 = time.perf_counter()
            window["prep"] += fwd0 - prep0
            rewards = engine(_to(inputs, device))
            loss, stats = _loss(t.loss, rewards, targets, t.theta, device, weights)
            if not all_ranks_true(bool(torch.isfinite(loss))):
                raise RuntimeError(f"non-finite loss at step {step + 1} (epoch {epoch}, batch {index}); "
                                   f"no checkpoint is written. Lower train.lr or check the data.")
            bwd0 = time.perf_counter()
            window["forward"] += bwd0 - fwd0
            engine.backward(loss)
            opt0 = time.perf_counter()
            window["backward"] += opt0 - bwd0
            engine.step()
            window["optimizer"] += time.perf_counter() - opt0
            step += 1
            window["loss"] += float(loss.detach())
            window["n"] += 1
            window["pairs"] += int(targets["y"].shape[0])
            train_s = spent_before + time.perf_counter() - attempt_t0
            # A time budget ends the run on every rank at the same step (any rank out of time -> all stop).
            out_of_time = budget_s is not None and not all_ranks_true(train_s < budget_s)
            last = step >= total_steps or out_of_time
            if step % t.eval_every == 0 or step % t.checkpoint_every == 0 or last:
                elapsed = time.perf_counter() - window["t0"]
                point = {"step": step, "epoch": epoch, "loss": window["loss"] / max(1, window["n"]),
                         "pairs_per_s_per_worker": window["pairs"] / max(elapsed, 1e-9),
                         "data_wait_share": window["wait"] / max(elapsed, 1e-9), "error_rows": window["errors"],
                         "time_share": {k: round(window[k] / max(elapsed, 1e-9), 3)
                                        for k in ("wait", "prep", "forward", "backward", "optimizer")},
                         "lr": engine.get_lr()[0], "train_s": round(train_s, 1)}
                margins, labels, masks, scores = evaluate(engine, model, val_batches, dims, device)
                point["val"] = validation_metrics(margins, labels, masks, dims)
                progress["curve"].append(point)
                window = _new_window()
                progress.update(step=step, epoch=epoch, batch_in_epoch=index + 1, train_s=train_s)
                _report(engine, model, progress, point, last, scores, dims, rank, compute_norm_stats)
            if last:
                done = True
                break
    if not done:  # data ran out before total_steps (short shards): final report so the job has a result
        margins, labels, masks, scores = evaluate(engine, model, val_batches, dims, device)
        point = {"step": step, "val": validation_metrics(margins, labels, masks, dims)}
        progress["curve"].append(point)
        _report(engine, model, progress, point, True, scores, dims, rank, compute_norm_stats)


def _new_window() -> dict:
    """Counters between two report points (the eval and checkpoint in between are not counted)."""
    return {"loss": 0.0, "n": 0, "pairs": 0, "errors": 0, "wait": 0.0, "prep": 0.0, "forward": 0.0,
            "backward": 0.0, "optimizer": 0.0, "t0": time.perf_counter()}


def _report(engine, model, progress, point, final, scores, dims, rank, compute_norm_stats):
    """Save DeepSpeed state (all ranks) + progress (rank 0), and on the last step the loadable model."""
    import ray.train

    with tempfile.TemporaryDirectory() as d:
        engine.save_checkpoint(d, tag="ds")
        if final:
            _save_final(engine, model, Path(d) / "final", scores, dims, rank, compute_norm_stats,
                        point.get("val", {}))
        if rank == 0:
            (Path(d) / "progress.json").write_text(json.dumps(progress, default=_json_default))
        metrics = {"step": point["step"], "final": final,
                   **{f"val_{k}_acc": v["acc_without_ties"] for k, v in point.get("val", {}).items()}}
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _save_final(engine, model, path, scores, dims, rank, compute_norm_stats, val=None):
    """The user-facing checkpoint (merged LoRA, head, config, SPEC §3.3 norm stats on the validation split, and
    the validation split's tie thresholds ε* per dimension, which relabel uses to emit `same`)."""
    from raypipe.reward.scoring import TIE_EPSILON_FILE
    import deepspeed

    stage3 = engine.zero_optimization_stage() == 3
    params = list(model.parameters())
    ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if stage3 else _null()
    with ctx:
        if rank == 0:
            stats = compute_norm_stats(np.asarray(scores).reshape(-1, len(dims)), dims)
            eps = {d: r["epsilon"] for d, r in (val or {}).items()
                   if isinstance(r.get("epsilon"), float) and np.isfinite(r["epsilon"])}
            model.save_pretrained(path, norm_stats=stats, extra={TIE_EPSILON_FILE: eps} if eps else None)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, float) and math.isnan(o):
        return None
    raise TypeError(type(o))
