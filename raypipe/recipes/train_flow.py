"""`raypipe train-flow` (train.algo = pretrain | sft | dpo | rwr | lift): the generator on Ray Train + DeepSpeed.

    raypipe train-flow --config configs/flow_tiny.yaml --out flow-out train.algo=dpo [generator=PATH]
    raypipe train-flow --config configs/lift_tiny.yaml --out lift-out data.manifest=rated/   # critic relabel output

Driver (`run`): resolve the generator (a WanPipeline folder, or a tiny random one written to OUT/tiny_wan), the
data (a manifest, or a seeded SynthPref set when none is given), build the training rows for the algorithm,
stream them through the Ray Data decode stage (or the latent cache) into the workers, run the TorchTrainer, copy
the result to OUT/final and write the curve (JSON + PNG) and summary.json.

Rows per algorithm (from a preference manifest; `data.source` = labels | margins picks how winners are chosen):
- pretrain: every distinct (video, prompt) — plain flow matching on the whole transformer (prompt dropout for CFG)
- sft: the winners of the scalarised pairs;  dpo: (winner, loser, prompt);
- rwr: both videos of every pair with reward Σ_d w_d·score (relabel output `score_<S>_<DIM>`, else `MOS_<S>_<DIM>`).
- lift (SPEC §8, `raypipe.flow.lift`): every video with a weight — `data.source=weights`: a column (default
  `lift_weight` of `relabel --critic` output; any relabel column with `data.weight_column`), `data.source=ratings`:
  human ratings (a LiFT-HRA JSON or a pointwise manifest with Good/Normal/Bad) mapped by `data.weight_map`; with
  no manifest, SynthPref's ratings.parquet. Real videos (`data.real_manifest`, or `data.real_synth` clean SynthPref
  renders) join with `train.real_weight`. The loss follows the family: v-prediction (CogVideoX) or flow (Wan).
OUT/final is a LoRA folder loadable with the pipeline's `load_lora_weights` (pretrain, and any algorithm with
lora.enabled=false: a whole pipeline folder). `family` picks the tiny random generator built when none is given.

Workers (`train_func`): batch -> `raypipe.flow.training.step_loss` -> engine.backward/step; checkpoints every
`checkpoint_every` steps, resume with DeepSpeed state and data position, TensorBoard under OUT/tensorboard.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raypipe.config import ClipConfig, ConfigError, SynthConfig, build_config, repo_path, save_config, to_dict
from raypipe.data.inputs import read_pair_table, real_videos
from raypipe.data.location import StagedOutput
from raypipe.data.tables import suffix
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
from raypipe.flow.cogvideox import TinyCogVideoXConfig
from raypipe.flow.families import FAMILIES, load_family, make_tiny_generator, takes_image
from raypipe.flow.lora import add_lora, save_lora
from raypipe.flow.pairs import ALGOS, training_rows, with_real_pairs
from raypipe.flow.training import step_loss
from raypipe.flow.wan_build import TinyWanConfig
from raypipe.video.synth import manifest_or_synthpref

# --- config ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FlowLoraSettings:
    enabled: bool = True  # pretrain trains the whole transformer regardless
    r: int = 64  # LoRA rank
    alpha: int = 128  # LoRA alpha (scale alpha/r)
    dropout: float = 0.0  # LoRA dropout
    experts: str = "both"  # Wan2.2 A14B: both | high | low (the expert(s) that get adapters)


@dataclasses.dataclass
class FlowDataConfig:
    manifest: str | None = None  # preference manifest (labels), relabel output (margins/scores), or pointwise
    # labels | margins (relabel output): how winners are chosen / rewards read; lift: ratings | weights (labels =
    # pick: ratings for a .json, no manifest, or a table without the weight column, else weights)
    source: str = "labels"
    weight_column: str = (
        "lift_weight"  # lift, source=weights: the per-video weight ("{side}" for pairs, e.g. score_{side}_MQ)
    )
    weight_transform: str = "none"  # lift: none | sigmoid (maps any score into (0, 1))
    weight_map: dict[str, float] | None = (
        None  # lift, source=ratings: rating -> weight (default Good .9, Normal .2, Bad .05)
    )
    questions: dict[str, str] | None = None  # lift, a LiFT-HRA JSON: the question text of each dimension
    # lift: real videos (path, prompt) mixed in at train.real_weight; dpo with train.lambda_sft: its SFT videos
    real_manifest: str | None = None
    real_synth: int = 0  # lift / dpo+lambda_sft: without real_manifest, this many clean SynthPref renders as real
    # r = sum_d w_d r_d over these dimensions, e.g. {MQ: 1}
    weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"VQ": 1.0, "MQ": 1.0, "TA": 1.0})
    min_margin: float = 0.0  # |scalarised preference| must exceed this to make a pair
    video_root: str | None = None  # relative video paths resolve against this (default: the manifest folder)
    rows_per_block: int = 4  # rows per Ray Data decode task
    latent_cache: str | None = None  # a folder: VAE latents + text embeddings written once (built if missing)
    # image-to-video (Wan2.1 I2V, Wan2.2 TI2V / I2V-A14B, LTX-Video): none | first_frame = each row's video's first
    # frame conditions the generator (a pair's winner's; SynthPref with synth.i2v=true gives both videos that frame)
    image: str = "none"
    decode_cpus: float = 1.0  # CPUs per decode task


@dataclasses.dataclass
class FlowTrainSettings(TrainerSettings):
    """train-flow's `train` section: the shared trainer fields (raypipe.distributed.trainer.TrainerSettings) + these."""

    algo: str = "dpo"  # pretrain | sft | dpo | rwr | lift
    cpus_per_worker: float = 0.5  # CPUs reserved per training worker
    lr: float = 5e-6  # paper value for LoRA DPO
    batch: int = 4  # pairs (dpo) or videos (others) per worker per step
    checkpoint_every: int = 50
    log_every: int = 10  # steps between curve points (loss, stats, throughput)
    beta: float = 500.0  # Flow-DPO β
    beta_schedule: str = "constant"  # constant | derived (β·(1-t)², ablation)
    tau: float = 1.0  # Flow-RWR temperature
    lambda_real: float = 0.0  # Flow-RWR: weight of plain flow matching on real videos (LiFT)
    lambda_sft: float = 0.0  # Flow-DPO: weight of flow matching on the real videos (data.real_*) in every update
    real_weight: float = 0.9  # lift: the weight of every real video (LiFT: as a Good rating)
    prompt_dropout: float = 0.0  # share of prompts replaced by "" (classifier-free guidance); pretrain: 0.1


@dataclasses.dataclass
class FlowTrainConfig:
    generator: str | None = None  # a WanPipeline or CogVideoXPipeline folder (local copy); None: a tiny random one
    family: str = "wan"  # wan | cogvideox | hunyuan | hunyuan15 | ltx | ltx2: the tiny random one (generator null)
    tiny: TinyWanConfig = dataclasses.field(default_factory=TinyWanConfig)  # the random Wan's shape
    tiny_cogvideox: TinyCogVideoXConfig = dataclasses.field(default_factory=TinyCogVideoXConfig)  # the random CogVideoX
    tiny_seed: int = 0  # seed of the tiny random model built when no path is given
    dtype: str = "float32"  # bfloat16 on GPUs
    lora: FlowLoraSettings = dataclasses.field(default_factory=FlowLoraSettings)
    clip: ClipConfig = dataclasses.field(default_factory=ClipConfig)
    data: FlowDataConfig = dataclasses.field(default_factory=FlowDataConfig)
    synth: SynthConfig = dataclasses.field(default_factory=lambda: SynthConfig(pairs=512, seed=11))
    train: FlowTrainSettings = dataclasses.field(default_factory=FlowTrainSettings)
    out: str = "flow-out"  # output folder, or an object-store prefix (s3://bucket/run; checkpoints kept there)
    address: str | None = None  # Ray cluster address; null: RAY_ADDRESS or a new local Ray
    progress: bool = True  # progress bars


# --- the job -------------------------------------------------------------------------------------------------
def _prepare(cfg: FlowTrainConfig, out: Path) -> tuple[FlowTrainConfig, str]:
    manifest = manifest_or_synthpref(cfg.data.manifest, out / "data", cfg.synth, "data.manifest", cfg.progress)
    if cfg.generator is None:
        if cfg.family not in FAMILIES:
            raise ConfigError(f"family must be one of {sorted(FAMILIES)}, got {cfg.family!r}")
        tiny = {"wan": cfg.tiny, "cogvideox": cfg.tiny_cogvideox}.get(cfg.family)  # others: their default tiny
        path = make_tiny_generator(cfg.family, out / f"tiny_{cfg.family}", tiny, cfg.tiny_seed)
        cfg = dataclasses.replace(cfg, generator=str(path))
    else:  # absolute for the workers; a repo asset (assets/tiny-generator) resolves from any working directory
        cfg = dataclasses.replace(cfg, generator=str(repo_path(cfg.generator)))
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
        "digest": rows_digest(rows),
    }
    keys = {"uri_w": "w", "uri_l": "l"} if cfg.train.algo == "dpo" else {"uri": ""}
    if cfg.data.image == "first_frame":
        key["image"] = "first_frame"
    return cached_latents(rows, cfg.generator, cfg.clip, keys, path, key, image_key(cfg))


def image_key(cfg: FlowTrainConfig) -> str | None:
    """The clip key whose first frames condition an image-to-video generator (None: text-to-video)."""
    if cfg.data.image == "none":
        return None
    return "w" if cfg.train.algo == "dpo" else ""


def rows_digest(rows: pa.Table) -> str:
    """Identifies the training rows (every column's values), so a latent cache is never reused for other rows."""
    import hashlib

    h = hashlib.sha256()
    for name in rows.column_names:
        h.update(name.encode() + b"\0" + repr(rows.column(name).to_pylist()).encode())
    return h.hexdigest()[:16]


def plot_flow_curve(curve: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("loss", "implicit_acc", "reward_margin", "mean_weight") if any(k in p for p in curve)]
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
    if cfg.lora.experts not in ("both", "high", "low"):
        raise ConfigError(f"lora.experts must be both, high or low (Wan2.2 A14B), got {cfg.lora.experts!r}")
    if cfg.data.image not in ("none", "first_frame"):
        raise ConfigError(f"data.image must be none or first_frame (image-to-video), got {cfg.data.image!r}")
    stage = StagedOutput(cfg.out)  # a local folder, or staged locally and published to an object store
    out = stage.dir
    cfg, manifest_path = _prepare(cfg, out)
    if cfg.data.image != "none" and not takes_image(cfg.generator):
        raise ConfigError(
            f"data.image={cfg.data.image} needs an image-to-video generator (Wan I2V / TI2V, LTX-Video); "
            f"{cfg.generator} is text-to-video only"
        )
    if t.algo == "lift":
        rows, counts = lift_rows(cfg, manifest_path, out)
    else:
        relabelled = cfg.data.source == "margins"
        table = read_pair_table(manifest_path, list(cfg.data.weights), cfg.data.video_root, relabelled=relabelled)
        rows, counts = training_rows(table, t.algo, cfg.data.source, cfg.data.weights, cfg.data.min_margin)
        if t.algo == "dpo" and t.lambda_sft:
            if not (cfg.data.real_manifest or cfg.data.real_synth):
                raise ConfigError("train.lambda_sft needs real videos: data.real_manifest=PATH or data.real_synth=N")
            rows, counts = with_real_pairs(rows, counts, _real_videos(cfg, out))
    if "is_real" in rows.column_names:  # real rows were appended last: spread them over every worker's shard
        rows = rows.take(pa.array(np.random.default_rng(t.seed).permutation(rows.num_rows)))
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
    progress, wall = fit_trainer(train_func, loop_config, t, out, f"train-flow-{t.algo}", {"train": ds}, stage.storage)
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
        "final": stage.uri_of("final"),
        "last": last,
        "generator": cfg.generator,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    stage.publish()
    print(
        f"train-flow {t.algo}: {summary['steps']} steps in {summary['wall_s']} s, last {last}; "
        f"result in {out / 'final'}",
        flush=True,
    )
    return summary


def lift_rows(cfg: FlowTrainConfig, manifest_path: str, out: Path) -> tuple[pa.Table, dict]:
    """LiFT's rows (`raypipe.flow.lift`) from the configured source, plus the real videos."""
    from raypipe.critic.model import DEFAULT_QUESTIONS
    from raypipe.data.manifest import default_root, read_table
    from raypipe.data.ratings import load_ratings
    from raypipe.flow.lift import rating_rows, weight_rows, with_real
    from raypipe.video.source import join_uri

    d = cfg.data
    source = d.source
    if source not in ("labels", "ratings", "weights"):
        raise ConfigError(f"train.algo=lift reads data.source = ratings | weights, got {source!r}")
    if d.manifest is None:  # SynthPref: its ratings.parquet stands in for human ratings
        manifest_path, source = str(Path(manifest_path).parent / "ratings.parquet"), "ratings"
    table = None
    if source != "ratings" and not manifest_path.lower().endswith(".json"):
        table = pq.read_table(manifest_path) if Path(manifest_path).is_dir() else read_table(manifest_path)
        if source == "labels":
            name = d.weight_column.format(side="A") if "{side}" in d.weight_column else d.weight_column
            source = "weights" if {name, f"{name}_A"} & set(table.column_names) else "ratings"
    if source == "labels" or source == "ratings":
        ratings = load_ratings(manifest_path, list(d.weights), d.questions or DEFAULT_QUESTIONS, d.video_root)
        rows, counts = rating_rows(ratings, d.weights, d.weight_map)
    else:
        root = d.video_root or default_root(manifest_path)
        for side in ("", "_A", "_B"):  # a manifest's relative paths; relabel output has its uri columns already
            if f"path{side}" in table.column_names and f"uri{side}" not in table.column_names:
                uris = [join_uri(root, p) for p in table.column(f"path{side}").to_pylist()]
                table = table.append_column(f"uri{side}", pa.array(uris, pa.string()))
        rows, counts = weight_rows(table, d.weight_column, d.weight_transform)
    counts["source"] = source
    if d.real_manifest or d.real_synth:
        rows, counts = with_real(rows, counts, _real_videos(cfg, out), cfg.train.real_weight)
    return rows, counts


def _real_videos(cfg: FlowTrainConfig, out: Path) -> pa.Table:
    """The real videos (`uri`, `prompt`): data.real_manifest, else data.real_synth clean renders in OUT/real."""
    d, synth = cfg.data, dataclasses.replace(cfg.synth, seed=cfg.synth.seed + 1)
    return real_videos(d.real_manifest, d.real_synth, out / "real", synth)


def _decoded_clips(cfg: FlowTrainConfig, rows: pa.Table):
    """The training rows with their clips decoded by the Ray Data decode stage (the VAE runs on the workers)."""
    columns = {"uri_w": "frames_w", "uri_l": "frames_l"} if cfg.train.algo == "dpo" else {"uri": "frames"}
    image = image_key(cfg)
    kwargs = {"clip": cfg.clip, "columns": columns, "image_from": None if image is None else f"frames{suffix(image)}"}
    return decode_stage(rows, decode_clips_block, kwargs, cfg.data.rows_per_block, cfg.data.decode_cpus)


# --- the worker loop -----------------------------------------------------------------------------------------
def train_func(config: dict) -> None:
    import ray.train

    cfg = build_config(FlowTrainConfig, config["cfg"])
    t, total_steps = cfg.train, config["total_steps"]
    torch.manual_seed(t.seed)
    gen = load_family(cfg.generator, dtype=cfg.dtype, device="cuda" if t.use_gpu else "cpu")
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
    """What trains: LoRA adapters (sft/dpo/rwr/lift with lora.enabled), else the whole transformer."""
    t = cfg.train
    if t.gradient_checkpointing:
        gen.transformer.enable_gradient_checkpointing()
    if t.algo != "pretrain" and cfg.lora.enabled:
        lora = cfg.lora
        add_lora(gen.transformer, lora.r, lora.alpha, lora.dropout, gen.lora_targets, lora.experts)
    else:  # pretrain (run() refuses Flow-DPO without LoRA: its reference is the model with adapters disabled)
        gen.transformer.requires_grad_(True)


def save_final(gen, cfg: FlowTrainConfig, d: Path) -> None:
    """OUT/final on rank 0: the LoRA adapters (pretrain or lora.enabled=false: the whole pipeline with its new
    transformer weights)."""
    if world_rank() != 0:
        return
    if cfg.train.algo == "pretrain" or not cfg.lora.enabled:
        gen.save_pretrained(d)
    else:
        save_lora(gen, d)
