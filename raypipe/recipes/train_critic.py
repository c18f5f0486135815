"""`raypipe train-critic`: LiFT's generative critic on Ray Train + DeepSpeed — a VLM fine-tuned to answer each
dimension's question with "<Rating>. <reason>" (SPEC §8).

    raypipe train-critic --config configs/critic_tiny.yaml --out critic-out [train.score_only=true]

Driver (`run`): ratings from a LiFT-HRA JSON or a pointwise manifest with `reason_<DIM>` (a seeded SynthPref
train/validation pair of sets with reasons when the config names none), validated before any Ray work; the words a
word-level tokenizer lacks; decoded videos streamed by Ray Data (cached once in the object store by default); the
TorchTrainer; then OUT/final (a transformers folder + critic_config.json), OUT/metrics.json (held-out rating
accuracy per dimension, confusion, TA reason quality on SynthPref) and the learning curve.

Workers (`train_func`): a batch of videos -> one conversation per rated (video, dimension) -> next-token loss on
the answer tokens only -> engine.backward/step; every `eval_every` steps the critic answers the questions for
held-out videos (generation) and the answers are scored; checkpoints and resume as every job
(`raypipe.distributed.loop`). `train.score_only=true` trains on the rating word alone (LiFT's ablation).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from raypipe.config import ConfigError, DataConfig, SynthConfig, build_config, repo_path, save_config, to_dict
from raypipe.critic.metrics import critic_report
from raypipe.critic.model import Critic, CriticModelConfig
from raypipe.critic.processor import unknown_words
from raypipe.critic.training import answer_texts, conversations, generate_answers, synth_truth, truth_of
from raypipe.data.location import StagedOutput
from raypipe.data.manifest import ManifestError
from raypipe.data.ratings import load_ratings
from raypipe.data.tables import column_frames, without_errors
from raypipe.distributed.cluster import configure_data_context, init_ray, materialize_in_order
from raypipe.distributed.decode import decode_stage, decode_videos_block
from raypipe.distributed.loop import (
    TrainClock,
    Window,
    record_point,
    record_rows,
    require_finite,
    resume,
    save_and_report,
    unconsumed,
    world_rank,
    zero_loss,
)
from raypipe.distributed.trainer import TrainerSettings, deepspeed_engine, fit_trainer, require_one_step, step_count
from raypipe.reward.backbone import make_tiny_backbone
from raypipe.reward.scoring import SAMPLING_FILE
from raypipe.video.synth import make_synthpref


@dataclasses.dataclass
class CriticSettings(TrainerSettings):
    """train-critic's `train` section: the shared trainer fields (distributed.trainer.TrainerSettings) + these."""

    cpus_per_worker: float = 0.5  # CPUs reserved per worker (leave some for decoding)
    lr: float = 1e-5  # peak learning rate (LiFT's critic: 1e-5 with LoRA)
    warmup_ratio: float = 0.05  # share of the steps spent warming the learning rate up
    min_lr_ratio: float = 0.1
    batch: int = 8  # videos per worker per step (each gives one conversation per rated dimension)
    epochs: int = 3  # passes over the training videos
    eval_every: int = 100  # steps between held-out points of the learning curve
    eval_videos: int = 32  # held-out videos per rank answered at a curve point (all of them at the end)
    score_only: bool = False  # train on the rating word alone, without the reason (LiFT's ablation)
    prefetch_batches: int = 4  # batches prefetched per worker
    shuffle_buffer: int = 64  # local shuffle (videos) in each worker


@dataclasses.dataclass
class CriticDataConfig(DataConfig):
    """train-critic's `data` section: ratings (`manifest`: a LiFT-HRA .json or a pointwise .parquet/.csv)."""

    cache_frames: bool = True  # decode every video once into the object store (small sets; off for large ones)


@dataclasses.dataclass
class CriticTrainConfig:
    model: CriticModelConfig = dataclasses.field(default_factory=CriticModelConfig)
    data: CriticDataConfig = dataclasses.field(default_factory=CriticDataConfig)  # data.manifest: training ratings
    val_manifest: str | None = None  # held-out ratings (same formats): learning curve and metrics.json
    synth_train: SynthConfig = dataclasses.field(default_factory=lambda: SynthConfig(pairs=1024, seed=1))
    synth_val: SynthConfig = dataclasses.field(default_factory=lambda: SynthConfig(pairs=128, seed=2))
    train: CriticSettings = dataclasses.field(default_factory=CriticSettings)
    out: str = "critic-out"  # output folder, or an object-store prefix (s3://bucket/run; checkpoints kept there)
    address: str | None = None  # Ray cluster address; null: RAY_ADDRESS or a new local Ray
    progress: bool = True  # progress bars


# --- the driver -------------------------------------------------------------------------------------------------
def ratings_source(manifest: str | None, folder: Path, synth: SynthConfig, key: str) -> str:
    """`manifest`, or a seeded SynthPref set's ratings.parquet (both videos of every pair, rated with reasons)."""
    if manifest is not None:
        return manifest
    if not (folder / "ratings.parquet").exists():
        print(f"no {key}: synthesising SynthPref ({synth.pairs} pairs, seed {synth.seed}) in {folder}", flush=True)
        make_synthpref(folder, synth, progress=True)
    return str(folder / "ratings.parquet")


def _check(cfg: CriticTrainConfig) -> None:
    t, m = cfg.train, cfg.model
    if t.zero_stage not in (0, 2):
        raise ConfigError(
            f"train.zero_stage must be 0 or 2 for the critic (it generates on every rank), got {t.zero_stage}"
        )
    missing = [d for d in m.dimensions if not str(m.questions.get(d) or "").strip()]
    if missing:
        raise ConfigError(f"model.questions has no question for {missing}: set model.questions.<DIM>")
    if t.eval_videos < 1 or t.eval_every < 1:
        raise ConfigError("train.eval_videos and train.eval_every must be >= 1")


def _backbone(cfg: CriticTrainConfig, out: Path) -> str:
    if cfg.model.name_or_path is None:
        return str(make_tiny_backbone(out / "tiny_backbone", cfg.model.tiny, cfg.model.tiny_seed))
    return str(repo_path(cfg.model.name_or_path))


def prepare(cfg: CriticTrainConfig, out: Path) -> tuple[CriticTrainConfig, object, object]:
    """Validated ratings (train, val) and the config the workers get: absolute backbone, the added words."""
    _check(cfg)
    dims, questions = cfg.model.dimensions, cfg.model.questions
    sources = (
        ratings_source(cfg.data.manifest, out / "data" / "train", cfg.synth_train, "data.manifest"),
        ratings_source(cfg.val_manifest, out / "data" / "val", cfg.synth_val, "val_manifest"),
    )
    try:
        train, val = (load_ratings(s, dims, questions, cfg.data.video_root) for s in sources)
    except ManifestError as e:
        raise ConfigError(str(e)) from None
    require_one_step(train.num_rows, cfg.train, "training videos")
    backbone = _backbone(cfg, out)
    tokenizer = _tokenizer(backbone)
    texts = [*(questions[d] for d in dims), *answer_texts(train.to_pylist(), dims, cfg.train.score_only)]
    words = list(dict.fromkeys([*cfg.model.added_words, *unknown_words(tokenizer, texts)]))
    model = dataclasses.replace(cfg.model, name_or_path=backbone, added_words=words)
    data = dataclasses.replace(cfg.data, manifest=sources[0])
    return dataclasses.replace(cfg, model=model, data=data, val_manifest=sources[1]), train, val


def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def video_dataset(table, data: CriticDataConfig, cache: bool):
    ds = decode_stage(table, decode_videos_block, {"sampling": data.sampling}, data.rows_per_block, data.decode_cpus)
    return materialize_in_order(ds) if cache else ds


def run(cfg: CriticTrainConfig) -> dict:
    stage = StagedOutput(cfg.out)  # a local folder, or staged locally and published to an object store
    out = stage.dir
    cfg, train, val = prepare(cfg, out)
    t = cfg.train
    save_config(cfg, out)
    init_ray(cfg.address)
    configure_data_context(cfg.progress)
    t0 = time.perf_counter()
    train_ds, val_ds = video_dataset(train, cfg.data, cfg.data.cache_frames), video_dataset(val, cfg.data, True)
    decode_s = round(time.perf_counter() - t0, 1)
    steps_per_epoch, total_steps = step_count(train.num_rows, t, t.batch, drop_last=False)
    print(
        f"critic: {train.num_rows} training videos ({len(conversations(train.to_pylist(), cfg.model.dimensions, True))}"
        f" conversations), {val.num_rows} held out; {t.num_workers} workers x {t.batch} videos/step, "
        f"{steps_per_epoch} steps/epoch, {total_steps} steps; {len(cfg.model.added_words)} words added to the "
        f"tokenizer; {'score only' if t.score_only else 'ratings with reasons'}",
        flush=True,
    )
    loop_config = {"cfg": to_dict(cfg), "total_steps": total_steps}
    progress, wall = fit_trainer(
        train_func, loop_config, t, out, "train-critic", {"train": train_ds, "val": val_ds}, stage.storage
    )
    (out / "final" / SAMPLING_FILE).write_text(json.dumps(dataclasses.asdict(cfg.data.sampling)))
    curve = progress["curve"]
    (out / "learning_curve.json").write_text(json.dumps(curve, indent=2))
    plot_curve(curve, out / "learning_curve.png", cfg.model.dimensions)
    report = curve[-1]["val"]
    summary = {
        "final_checkpoint": stage.uri_of("final"),
        "steps": progress["step"],
        "wall_s": round(wall, 1),
        "decode_s": decode_s,
        "resumes": progress["resumes"],
        "score_only": t.score_only,
        "val_videos": val.num_rows,
        "val": report,
        "examples": progress.get("examples", []),
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    stage.publish()
    _print_summary(summary, cfg.model.dimensions)
    return summary


def plot_curve(curve: list[dict], path: Path, dims) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in curve if "val" in p]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for dim in dims:
        ax.plot([p["step"] for p in points], [p["val"][dim]["accuracy"] for p in points], marker="o", label=dim)
    ax.axhline(1 / 3, color="grey", lw=0.8, ls="--", label="chance")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out rating accuracy")
    ax.set_ylim(0.0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print_summary(summary: dict, dims) -> None:
    print(f"\nfinal critic: {summary['final_checkpoint']}  ({summary['steps']} steps, {summary['wall_s']} s)")
    print(f"{'dim':>5} {'accuracy':>9} {'n':>5} {'unparsable':>11}")
    for dim in dims:
        r = summary["val"][dim]
        print(f"{dim:>5} {r['accuracy']:9.3f} {r['n']:5d} {r['unparsable']:11d}")
    reasons = summary["val"].get("TA", {}).get("reasons")
    if reasons:
        print(
            f"TA reasons naming the wrong attributes: {reasons['names_wrong_attributes']:.3f} "
            f"(of {reasons['videos_with_wrong_attributes']} videos)"
        )


# --- the worker loop -----------------------------------------------------------------------------------------
def train_func(config: dict) -> None:
    import ray.train

    cfg = build_config(CriticTrainConfig, config["cfg"])
    t, total_steps, dims = cfg.train, config["total_steps"], cfg.model.dimensions
    torch.manual_seed(t.seed)
    device = torch.device("cuda", torch.cuda.current_device()) if t.use_gpu else torch.device("cpu")
    critic = Critic.build(cfg.model)
    if t.gradient_checkpointing:
        critic.enable_gradient_checkpointing()
    engine = deepspeed_engine(critic, t, total_steps, bf16=t.use_gpu and cfg.model.dtype == "bfloat16")
    progress = resume(engine)
    held_out = held_out_rows(ray.train.get_dataset_shard("val"))
    shard = ray.train.get_dataset_shard("train")
    clock, window, step = TrainClock(progress, t.max_minutes), Window(), progress["step"]
    last = step >= total_steps
    for epoch in range(progress["epoch"], t.epochs):
        if last:
            break
        batches = shard.iter_batches(
            batch_size=t.batch,
            batch_format="pyarrow",
            prefetch_batches=t.prefetch_batches,
            local_shuffle_buffer_size=t.shuffle_buffer or None,
            local_shuffle_seed=t.seed * 1000 + epoch,
        )
        for index, batch, wait_s in unconsumed(batches, progress, epoch):
            if t.record_rows and world_rank() == 0:
                record_rows(progress, epoch, batch, ("row_id",))
            loss, n_conv = batch_loss(engine, critic, batch, dims, t.score_only, device)
            require_finite(loss, step, epoch, index)
            engine.backward(loss)
            engine.step()
            step += 1
            window.step(loss=float(loss.detach()), conversations=n_conv, wait=wait_s)
            last = step >= total_steps or clock.out_of_time()
            if step % t.eval_every == 0 or step % t.checkpoint_every == 0 or last:
                point = curve_point(window, step, epoch, engine.get_lr()[0], clock.train_s())
                point["val"] = held_out_report(critic, held_out, dims, None if last else t.eval_videos, progress)
                record_point(progress, point, index, clock.train_s())
                window = Window()
                _checkpoint(engine, critic, progress, point, last)
            if last:
                break
    if not last:  # the data ran out before total_steps: a final report so the job has a result
        point = {"step": step, "val": held_out_report(critic, held_out, dims, None, progress)}
        progress["curve"].append(point)
        _checkpoint(engine, critic, progress, point, True)


def batch_loss(engine, critic, batch, dims, score_only: bool, device) -> tuple[torch.Tensor, int]:
    """The answer-token loss of every rated (video, dimension) of the batch; a zero step when none is usable."""
    batch, _ = without_errors(batch)
    rows = batch.select([c for c in batch.column_names if c != "frames"]).to_pylist() if batch.num_rows else []
    convs = conversations(rows, dims, score_only)
    if not convs:
        return zero_loss(engine.module), 0
    frames = column_frames(batch, "frames")
    inputs = critic.processor.train_batch(
        [frames[i] for i, _, _ in convs],
        [rows[i]["prompt"] for i, _, _ in convs],
        [d for _, d, _ in convs],
        [a for _, _, a in convs],
    )
    return engine({k: v.to(device) for k, v in inputs.items()}), len(convs)


def held_out_rows(shard) -> list[dict]:
    """This rank's held-out videos (decoded once) as dicts with their frames; decode failures left out."""
    rows = []
    for batch in shard.iter_batches(batch_size=64, batch_format="pyarrow"):
        batch, _ = without_errors(batch)
        frames = column_frames(batch, "frames")
        for row, f in zip(batch.select([c for c in batch.column_names if c != "frames"]).to_pylist(), frames):
            rows.append({**row, "frames": f})
    return rows


def held_out_report(critic, rows: list[dict], dims, limit: int | None, progress: dict) -> dict:
    """Answers for this rank's held-out videos (the first `limit`, or all), gathered from every rank, scored."""
    import torch.distributed as dist

    rows = rows if limit is None else rows[:limit]
    answers = generate_answers(critic, [r["frames"] for r in rows], [r["prompt"] for r in rows], dims)
    local = [{k: v for k, v in r.items() if k != "frames"} for r in rows]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (local, answers))
    meta = [r for part, _ in gathered for r in part]
    merged = {d: [a for _, ans in gathered for a in ans[d]] for d in dims}
    if limit is None:
        progress["examples"] = [
            {"prompt": m["prompt"], "path": m["path"], **{d: merged[d][i] for d in dims}}
            for i, m in enumerate(meta[:8])
        ]
    report = critic_report(merged, truth_of(meta, dims), dims, synth_truth(meta))
    if limit is None:
        report["paths"] = [m["path"] for m in meta]  # the order of every dimension's `correct`
    return report


def curve_point(window: Window, step: int, epoch: int, lr: float, train_s: float) -> dict:
    return {
        "step": step,
        "epoch": epoch,
        "loss": window.mean("loss"),
        "conversations_per_s_per_worker": window.rate("conversations"),
        "data_wait_share": window.rate("wait"),
        "lr": lr,
        "train_s": round(train_s, 1),
    }


def _checkpoint(engine, critic, progress, point, final) -> None:
    metrics = {"step": point["step"], **{f"val_{d}_acc": point["val"][d]["accuracy"] for d in critic.dimensions}}
    save = (lambda path: critic.save_pretrained(path) if world_rank() == 0 else None) if final else None
    save_and_report(engine, progress, metrics, save)
