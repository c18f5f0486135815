"""The Ray Train worker loop for the generator: pretrain / SFT / Flow-DPO / Flow-RWR with a DeepSpeed engine.

Per step: a batch from this worker's Ray Data shard (decoded clips) -> frozen VAE + text encoder -> shared noise
and time -> the transformer's velocity (LoRA policy; for DPO also the reference = adapters disabled, no_grad)
-> loss -> engine.backward/step. Checkpoints and resume follow the reward loop: DeepSpeed state of every rank +
rank 0's progress.json, consumed batches of the current epoch skipped after a restart. Rank 0 writes TensorBoard
event files (loss, DPO implicit accuracy and reward margin, lr) under OUT/tensorboard.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def clips_of(batch, column: str) -> np.ndarray:
    from raypipe.data.pairs import column_frames

    return np.stack(column_frames(batch, column)) if batch.num_rows else np.zeros((0,), np.uint8)


def _without_errors(batch):
    import pyarrow.compute as pc

    if "error" not in batch.column_names:
        return batch, 0
    bad = pc.is_valid(batch.column("error"))
    n_bad = int(pc.sum(bad).as_py() or 0)
    return (batch.filter(pc.invert(bad)), n_bad) if n_bad else (batch, 0)


def latents_of(gen, batch, key: str) -> torch.Tensor:
    """Normalised latents of a batch: from the latent cache (`latents<sfx>`) or by encoding `frames<sfx>`."""
    from raypipe.flow.latents import suffix, tensor_of

    sfx = suffix(key)
    if f"latents{sfx}" in batch.column_names:
        return torch.from_numpy(tensor_of(batch, f"latents{sfx}")).float()
    return gen.encode_videos(clips_of(batch, f"frames{sfx}"))


def text_of(gen, batch, prompts: list[str], dropout: float, generator: torch.Generator) -> torch.Tensor:
    """Prompt embeddings (cached `text` column or the text encoder), a `dropout` share replaced by the empty
    prompt's embedding (classifier-free guidance)."""
    from raypipe.flow.latents import tensor_of

    kept = drop_prompts(prompts, dropout, generator)
    if "text" not in batch.column_names:
        return gen.encode_prompts(kept)
    text = torch.from_numpy(tensor_of(batch, "text")).float()
    dropped = [i for i, p in enumerate(kept) if p == "" and prompts[i] != ""]
    if dropped:
        if not hasattr(gen, "_uncond"):
            gen._uncond = gen.encode_prompts([""]).float()
        text[dropped] = gen._uncond[0]
    return text


def drop_prompts(prompts: list[str], share: float, generator: torch.Generator) -> list[str]:
    """Replace a `share` of prompts by "" (so the model also learns the unconditional velocity for CFG)."""
    if share <= 0:
        return list(prompts)
    keep = torch.rand(len(prompts), generator=generator) >= share
    return [p if k else "" for p, k in zip(prompts, keep.tolist())]


def step_loss(gen, engine, t_cfg, batch, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """The loss of one batch for the configured algorithm (see raypipe.flow.losses), and its stats."""
    from raypipe.flow.lora import reference
    from raypipe.flow.losses import (beta_t, dpo_loss, flow_error, noised, rwr_loss, sample_t, sft_loss)

    algo = t_cfg.algo
    prompts = batch.column("prompt").to_pylist()
    if algo == "dpo":
        z_w, z_l = latents_of(gen, batch, "w"), latents_of(gen, batch, "l")
        text = text_of(gen, batch, prompts, 0.0, generator)
        n = z_w.shape[0]
        t = sample_t(n, generator, gen.shift)
        eps = torch.randn(z_w.shape, generator=generator)  # ONE eps and ONE t per pair, shared by w and l
        xt_w, v_w = noised(z_w, eps, t)
        xt_l, v_l = noised(z_l, eps, t)
        xt, v, tt, tx = torch.cat([xt_w, xt_l]), torch.cat([v_w, v_l]), torch.cat([t, t]), torch.cat([text, text])
        err = flow_error(gen.velocity(xt, tt, tx, model=engine), v)
        with reference(engine.module):
            err_ref = flow_error(gen.velocity(xt, tt, tx, model=engine), v)
        loss, stats = dpo_loss(err[:n], err_ref[:n], err[n:], err_ref[n:], beta_t(t_cfg.beta, t, t_cfg.beta_schedule))
        return loss, stats
    z = latents_of(gen, batch, "")
    text = text_of(gen, batch, prompts, t_cfg.prompt_dropout, generator)
    t = sample_t(z.shape[0], generator, gen.shift)
    eps = torch.randn(z.shape, generator=generator)
    xt, v = noised(z, eps, t)
    err = flow_error(gen.velocity(xt, t, text, model=engine), v)
    if algo == "rwr":
        rewards = torch.tensor(batch.column("reward").to_pylist(), dtype=torch.float32)
        real = None
        if t_cfg.lambda_real and "is_real" in batch.column_names:
            mask = torch.tensor(batch.column("is_real").to_pylist(), dtype=torch.bool)
            real = err[mask] if mask.any() else None
        return rwr_loss(err, rewards, t_cfg.tau, real, t_cfg.lambda_real), {"mean_reward": float(rewards.mean())}
    return sft_loss(err), {}


def train_loop_per_worker(config: dict) -> None:
    import deepspeed
    import ray.train

    from raypipe.config import build_config
    from raypipe.flow.family import WanFamily
    from raypipe.flow.lora import add_lora
    from raypipe.train.flow_config import FlowTrainConfig
    from raypipe.train.common import all_ranks_true, deepspeed_config

    cfg = build_config(FlowTrainConfig, config["cfg"])
    t = cfg.train
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.manual_seed(t.seed)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    device = "cuda" if t.use_gpu else "cpu"
    gen = WanFamily.load(cfg.model.name_or_path, dtype=cfg.model.dtype, device=device)
    if t.algo != "pretrain" and cfg.model.lora.enabled:
        lora = cfg.model.lora
        add_lora(gen.transformer, lora.r, lora.alpha, lora.dropout, gen.lora_targets)
    elif t.algo == "dpo":
        raise ValueError("Flow-DPO needs LoRA (its reference is the model with adapters disabled)")
    else:
        gen.transformer.requires_grad_(True)
    deepspeed.init_distributed(dist_backend="nccl" if t.use_gpu else "gloo")
    total_steps = config["total_steps"]
    engine, _, _, _ = deepspeed.initialize(
        model=gen.transformer, model_parameters=[p for p in gen.transformer.parameters() if p.requires_grad],
        config=deepspeed_config(t, total_steps, bf16=t.use_gpu and cfg.model.dtype == "bfloat16",
                                micro_batch=t.batch))

    progress = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "curve": [], "resumes": [], "train_s": 0.0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(d, tag="ds")
            progress = json.loads((Path(d) / "progress.json").read_text())
        progress["resumes"].append({"at_step": progress["step"], "engine_global_steps": engine.global_steps})
    writer = None
    if rank == 0 and config.get("tensorboard_dir"):
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(config["tensorboard_dir"])
    generator = torch.Generator().manual_seed(t.seed * 1000 + rank * 7919 + progress["step"])

    shard = ray.train.get_dataset_shard("train")
    step, done = progress["step"], progress["step"] >= total_steps
    attempt_t0, spent_before = time.perf_counter(), float(progress.get("train_s", 0.0))
    budget_s = 60.0 * t.max_minutes if t.max_minutes else None
    window = {"loss": 0.0, "n": 0, "stats": {}, "t0": time.perf_counter(), "items": 0}
    for epoch in range(progress["epoch"], t.epochs):
        if done:
            break
        skip = progress["batch_in_epoch"] if epoch == progress["epoch"] else 0
        shard_iter = shard.iter_batches(batch_size=t.batch, batch_format="pyarrow", drop_last=True,
                                        local_shuffle_buffer_size=None)
        for index, batch in enumerate(shard_iter):
            if index < skip:
                continue
            engine.train()
            if t.record_rows:
                key = "uri_w" if "uri_w" in batch.column_names else "uri"
                progress.setdefault("rows", {}).setdefault(str(epoch), []).extend(batch.column(key).to_pylist())
            batch, n_bad = _without_errors(batch)
            progress["error_rows"] = progress.get("error_rows", 0) + n_bad
            if batch.num_rows:
                loss, stats = step_loss(gen, engine, t, batch, generator)
            else:  # every row failed to decode: a zero-gradient step keeps the ranks in lockstep
                loss = sum(p.sum() for p in engine.module.parameters() if p.requires_grad) * 0.0
                stats = {}
            if not all_ranks_true(bool(torch.isfinite(loss))):
                raise RuntimeError(f"non-finite loss at step {step + 1} (epoch {epoch}, batch {index}); no "
                                   f"checkpoint is written. Lower train.lr / train.beta or check the data.")
            engine.backward(loss)
            engine.step()
            step += 1
            window["loss"] += float(loss.detach())
            window["n"] += 1
            window["items"] += batch.num_rows
            for k, v in stats.items():
                window["stats"][k] = window["stats"].get(k, 0.0) + v
            train_s = spent_before + time.perf_counter() - attempt_t0
            out_of_time = budget_s is not None and not all_ranks_true(train_s < budget_s)
            last = step >= total_steps or out_of_time
            if step % t.log_every == 0 or step % t.checkpoint_every == 0 or last:
                elapsed = max(time.perf_counter() - window["t0"], 1e-9)
                point = {"step": step, "epoch": epoch, "loss": window["loss"] / window["n"],
                         "items_per_s_per_worker": window["items"] / elapsed, "lr": engine.get_lr()[0],
                         "train_s": round(train_s, 1),
                         **{k: v / window["n"] for k, v in window["stats"].items()}}
                progress["curve"].append(point)
                if writer is not None:
                    for k, v in point.items():
                        if k not in ("step", "epoch"):
                            writer.add_scalar(f"train/{k}", v, step)
                    writer.flush()
                window = {"loss": 0.0, "n": 0, "stats": {}, "t0": time.perf_counter(), "items": 0}
                progress.update(step=step, epoch=epoch, batch_in_epoch=index + 1, train_s=train_s)
                if step % t.checkpoint_every == 0 or last:
                    _report(engine, gen, progress, point, last, rank, t.algo, cfg.model.name_or_path)
            if last:
                done = True
                break
    if not done:
        _report(engine, gen, progress, {"step": step}, True, rank, t.algo, cfg.model.name_or_path)
    if writer is not None:
        writer.close()


def _report(engine, gen, progress, point, final, rank, algo, model_path):
    import ray.train

    from raypipe.flow.lora import save_lora

    with tempfile.TemporaryDirectory() as d:
        engine.save_checkpoint(d, tag="ds")
        if final and rank == 0:
            if algo == "pretrain":
                gen.pipeline.save_pretrained(Path(d) / "final")  # the whole pipeline, new transformer weights
                extra = Path(model_path) / "raypipe_family.json"
                if extra.exists():
                    (Path(d) / "final" / "raypipe_family.json").write_text(extra.read_text())
            else:
                save_lora(gen, Path(d) / "final")
        if rank == 0:
            (Path(d) / "progress.json").write_text(json.dumps(progress))
        ray.train.report({"step": point["step"], "final": final, "loss": point.get("loss")},
                         checkpoint=ray.train.Checkpoint.from_directory(d))
