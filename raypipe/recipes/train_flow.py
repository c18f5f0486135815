"""`raypipe train-flow` (train.algo = pretrain | sft | dpo | rwr): the generator on Ray Train + DeepSpeed.

    raypipe train-flow --config configs/flow_tiny.yaml --out flow-out train.algo=dpo [generator=PATH]

Driver (`run`): resolve the generator (a WanPipeline folder, or a tiny random one written to OUT/tiny_wan), the
data (a manifest, or a seeded SynthPref set when none is given), build the training rows for the algorithm,
stream them through the Ray Data decode stage (or the latent cache) into the workers, run the TorchTrainer, copy
the result to OUT/final and write the curve (JSON + PNG) and summary.json.

Rows per algorithm (from a preference manifest; `data.source` = labels | margins picks how winners are chosen):
- pretrain: every distinct (video, prompt) — plain flow matching on the whole transformer (prompt dropout for CFG)
- sft: the winners of the scalarised pairs;  dpo: (winner, loser, prompt);
- rwr: both videos of every pair with reward Σ_d w_d·score (relabel output `score_<S>_<DIM>`, else `MOS_<S>_<DIM>`).
OUT/final is a LoRA folder loadable with `WanPipeline.load_lora_weights` (pretrain: a whole WanPipeline folder).

Workers (`train_func`): batch -> `raypipe.flow.training.step_loss` -> engine.backward/step; checkpoints every
`checkpoint_every` steps, resume with DeepSpeed state and data position, TensorBoard under OUT/tensorboard.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from raypipe.config import ClipConfig, ConfigError, SynthConfig, build_config, save_config, to_dict
from raypipe.data.inputs import read_pair_table
from raypipe.distributed.cluster import configure_data_context, init_ray
from raypipe.distributed.decode import decode_clips_block, decode_stage
from raypipe.distributed.latents import cached_latents
from raypipe.distributed.loop import (
    TrainClock,
    Window,
    drop_error_rows,
    noise_generator,
    record_point,
    record_rows,
    require_finite,
    resume,
    save_and_report,
    tensorboard_writer,
    throughput_point,
    unconsumed,
    world_rank,
    zero_loss,
)
from raypipe.distributed.trainer import TrainerSettings, deepspeed_engine, fit_trainer, require_one_step, step_count
from raypipe.flow.family import TinyWanConfig, WanFamily, make_tiny_wan
from raypipe.flow.lora import add_lora, save_lora
from raypipe.flow.pairs import ALGOS, training_rows
from raypipe.flow.training import step_loss
from raypipe.video.synth import manifest_or_synthpref

# --- config ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FlowLoraSettings:
    enabled: bool = True  # pretrain trains the whole transformer regardless
    r: int = 64  # LoRA rank
    alpha: int = 128  # LoRA alpha (scale alpha/r)
    dropout: float = 0.0  # LoRA dropout


@dataclasses.dataclass
class FlowDataConfig:
    manifest: str | None = None  # preference manifest (labels), relabel output (margins/scores), or pointwise
    source: str = "labels"  # labels | margins (relabel output): how winners are chosen / rewards read
    # r = sum_d w_d r_d over these dimensions, e.g. {MQ: 1}
    weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"VQ": 1.0, "MQ": 1.0, "TA": 1.0})
    min_margin: float = 0.0  # |scalarised preference| must exceed this to make a pair
    video_root: str | None = None  # relative video paths resolve against this (default: the manifest folder)
    rows_per_block: int = 4  # rows per Ray Data decode task
    latent_cache: str | None = None  # a folder: VAE latents + text embeddings written once (built if missing)
    decode_cpus: float = 1.0  # CPUs per decode task


@dataclasses.dataclass
class FlowTrainSettings(TrainerSettings):
    """train-flow's `train` section: the shared trainer fields (raypipe.distributed.trainer.TrainerSettings) + these."""

    algo: str = "dpo"  # pretrain | sft | dpo | rwr
    cpus_per_worker: float = 0.5  # CPUs reserved per training worker
    lr: float = 5e-6  # paper value for LoRA DPO
    batch: int = 4  # pairs (dpo) or videos (others) per worker per step
    checkpoint_every: int = 50
    log_every: int = 10  # steps between curve points (loss, stats, throughput)
    beta: float = 500.0  # Flow-DPO β
    beta_schedule: str = "constant"  # constant | derived (β·(1-t)², ablation)
    tau: float = 1.0  # Flow-RWR temperature
    lambda_real: float = 0.0  # Flow-RWR: weight of plain flow matching on real videos (LiFT)
    prompt_dropout: float = 0.0  # share of prompts replaced by "" (classifier-free guidance); pretrain: 0.1


@dataclasses.dataclass
class FlowTrainConfig:
    generator: str | None = None  # a WanPipeline folder (local Wan2.1-T2V-1.3B-Diffusers); None: a tiny random one
    tiny: TinyWanConfig = dataclasses.field(default_factory=TinyWanConfig)  # the random generator's shape
    tiny_seed: int = 0  # seed of the tiny random model built when no path is given
    dtype: str = "float32"  # bfloat16 on GPUs
    lora: FlowLoraSettings = dataclasses.field(default_factory=FlowLoraSettings)
    clip: ClipConfig = dataclasses.field(default_factory=ClipConfig)
    data: FlowDataConfig = dataclasses.field(default_factory=FlowDataConfig)
    synth: SynthConfig = dataclasses.field(default_factory=lambda: SynthConfig(pairs=512, seed=11))
    train: FlowTrainSettings = dataclasses.field(default_factory=FlowTrainSettings)
    out: str = "flow-out"  # output folder
    address: str | None = None  # Ray cluster address; null: RAY_ADDRESS or a new local Ray
    progress: bool = True  # progress bars


# --- the job -------------------------------------------------------------------------------------------------
def _prepare(cfg: FlowTrainConfig, out: Path) -> tuple[FlowTrainConfig, str]:
    manifest = manifest_or_synthpref(cfg.data.manifest, out / "data", cfg.synth, "data.manifest", cfg.progress)
    if cfg.generator is None:
        path = make_tiny_wan(out / "tiny_wan", cfg.tiny, cfg.tiny_seed)
        cfg = dataclasses.replace(cfg, generator=str(path))
    return cfg, manifest


def _latent_cache(cfg: FlowTrainConfig, rows: pa.Table, out: Path):
    """The cached dataset for these rows: read it back, or build it once (Ray Data decode tasks + encoder actors)."""
    path = Path(cfg.data.latent_cache)
    if not path.is_absolute():
        path = out / path
    key = {
        "algo": cfg.train.algo,
        "rows": rows.num_rows,
        "clip": dataclasses.asdict(cfg.clip),
        "generator": cfg.generator,
        "weights": cfg.data.weights,
        "source": cfg.data.source,
    }
    keys = {"uri_w": "w", "uri_l": "l"} if cfg.train.algo == "dpo" else {"uri": ""}
    return cached_latents(rows, cfg.generator, cfg.clip, keys, path, key)


def plot_flow_curve(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("loss", "implicit_acc", "reward_margin") if any(k in p for p in curve)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
    for ax, key in zip(np.atleast_1d(axes), keys):
        pts = [(p["step"], p[key]) for p in curve if key in p]
        ax.plot([s for s, _ in pts], [v for _, v in pts], marker=".")
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(cfg: FlowTrainConfig) -> dict:
    t = cfg.train
    if t.algo not in ALGOS:
        raise ConfigError(f"train.algo must be one of {ALGOS}, got {t.algo!r}")
    if t.algo == "dpo" and not cfg.lora.enabled:
        raise ConfigError("Flow-DPO needs LoRA (lora.enabled=true): its reference is the model with adapters disabled")
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg, manifest_path = _prepare(cfg, out)
    relabelled = cfg.data.source == "margins"
    table = read_pair_table(manifest_path, list(cfg.data.weights), cfg.data.video_root, relabelled=relabelled)
    rows, counts = training_rows(table, t.algo, cfg.data.source, cfg.data.weights, cfg.data.min_margin)
    require_one_step(rows.num_rows, t, "training rows", f" ({counts})")
    save_config(cfg, out)
    init_ray(cfg.address)
    configure_data_context(cfg.progress)
    ds = _latent_cache(cfg, rows, out) if cfg.data.latent_cache else _decoded_clips(cfg, rows)
    _, total_steps = step_count(rows.num_rows, t, t.batch, drop_last=True)
    print(
        f"train-flow {t.algo}: {rows.num_rows} rows ({counts}), {t.num_workers} workers x {t.batch}/step, "
        f"{total_steps} steps, ZeRO-{t.zero_stage}",
        flush=True,
    )
    loop_config = {"cfg": to_dict(cfg), "total_steps": total_steps, "tensorboard_dir": str(out / "tensorboard")}
    progress, wall = fit_trainer(train_func, loop_config, t, out, f"train-flow-{t.algo}", {"train": ds})
    (out / "curve.json").write_text(json.dumps(progress["curve"], indent=2))
    if progress["curve"]:
        plot_flow_curve(progress["curve"], out / "curve.png")
    last = progress["curve"][-1] if progress["curve"] else {}
    summary = {
        "algo": t.algo,
        "steps": progress["step"],
        "rows": rows.num_rows,
        "row_counts": counts,
        "error_rows": progress.get("error_rows", 0),
        "resumes": progress["resumes"],
        "worker_nodes": progress.get("nodes"),
        "wall_s": round(wall, 1),
        "final": str(out / "final"),
        "last": last,
        "generator": cfg.generator,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"train-flow {t.algo}: {summary['steps']} steps in {summary['wall_s']} s, last {last}; "
        f"result in {out / 'final'}",
        flush=True,
    )
    return summary


def _decoded_clips(cfg: FlowTrainConfig, rows: pa.Table):
    """The training rows with their clips decoded by the Ray Data decode stage (the VAE runs on the workers)."""
    columns = {"uri_w": "frames_w", "uri_l": "frames_l"} if cfg.train.algo == "dpo" else {"uri": "frames"}
    return decode_stage(
        rows, decode_clips_block, {"clip": cfg.clip, "columns": columns}, cfg.data.rows_per_block, cfg.data.decode_cpus
    )


# --- the worker loop -----------------------------------------------------------------------------------------
def train_func(config: dict) -> None:
    import ray.train

    cfg = build_config(FlowTrainConfig, config["cfg"])
    t, total_steps = cfg.train, config["total_steps"]
    torch.manual_seed(t.seed)
    gen = WanFamily.load(cfg.generator, dtype=cfg.dtype, device="cuda" if t.use_gpu else "cpu")
    trainable(gen, cfg)
    engine = deepspeed_engine(gen.transformer, t, total_steps, bf16=t.use_gpu and cfg.dtype == "bfloat16")
    final = lambda d: save_final(gen, cfg, d)  # OUT/final, written with the last report
    progress = resume(engine)
    writer = tensorboard_writer(config.get("tensorboard_dir"))
    generator = noise_generator(t.seed, progress)
    shard = ray.train.get_dataset_shard("train")
    clock, window, step = TrainClock(progress, t.max_minutes), Window(), progress["step"]
    last = step >= total_steps
    for epoch in range(progress["epoch"], t.epochs):
        if last:
            break
        batches = shard.iter_batches(
            batch_size=t.batch, batch_format="pyarrow", drop_last=True, local_shuffle_buffer_size=None
        )
        for index, batch, _ in unconsumed(batches, progress, epoch):
            engine.train()
            if t.record_rows:
                record_rows(progress, epoch, batch, ("uri_w", "uri_A", "uri"))
            batch = drop_error_rows(batch, progress)
            if batch.num_rows:
                loss, stats = step_loss(gen, engine, t, batch, generator)
            else:  # every row failed to decode: a zero step keeps the ranks in lockstep
                loss, stats = zero_loss(engine.module), {}
            require_finite(loss, step, epoch, index)
            engine.backward(loss)
            engine.step()
            step += 1
            window.step(loss=float(loss.detach()), items=batch.num_rows, **stats)
            last = step >= total_steps or clock.out_of_time()
            if step % t.log_every == 0 or step % t.checkpoint_every == 0 or last:
                train_s = clock.train_s()
                point = throughput_point(window, step, epoch, engine, train_s)
                record_point(progress, point, index, train_s, writer)
                window = Window()
                if step % t.checkpoint_every == 0 or last:
                    save_and_report(engine, progress, {"step": step, "loss": point["loss"]}, final if last else None)
            if last:
                break
    if not last:  # data ran out before total_steps: a final report so the job has a result
        save_and_report(engine, progress, {"step": step, "loss": None}, final)
    if writer is not None:
        writer.close()


def trainable(gen, cfg: FlowTrainConfig) -> None:
    """What trains: LoRA adapters (sft/dpo/rwr with lora.enabled), else the whole transformer."""
    t = cfg.train
    if t.gradient_checkpointing:
        gen.transformer.enable_gradient_checkpointing()
    if t.algo != "pretrain" and cfg.lora.enabled:
        lora = cfg.lora
        add_lora(gen.transformer, lora.r, lora.alpha, lora.dropout, gen.lora_targets)
    else:  # pretrain (run() refuses Flow-DPO without LoRA: its reference is the model with adapters disabled)
        gen.transformer.requires_grad_(True)


def save_final(gen, cfg: FlowTrainConfig, d: Path) -> None:
    """OUT/final on rank 0: the LoRA adapters (pretrain: the whole pipeline with its new transformer weights)."""
    if world_rank() != 0:
        return
    if cfg.train.algo == "pretrain":
        gen.save_pretrained(d)
    else:
        save_lora(gen, d)
