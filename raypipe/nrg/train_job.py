"""`raypipe train-latent-reward`: the noise-aware latent reward model of Flow-NRG on Ray Train (SPEC §6.1).

    raypipe train-latent-reward --config configs/latent_reward_tiny.yaml --out lr-out

1. Pairs from a preference manifest (labels y_<DIM>) or `raypipe relabel` output (`model_<DIM>` = A/B/same, the
   reward model's labels) — with no manifest the tiny preset synthesises SynthPref; a validation share is held out
   by row_id.
2. The latent cache (Ray Data decode tasks + VAE/text-encoder actors, `raypipe.flow.latents`): latents_A,
   latents_B and the prompt's text embedding per pair, written once to OUT/latents/{train,val}.
3. Ray Train workers with a DeepSpeed engine over `LatentReward` (first K generator blocks + heads): per pair ONE
   eps and ONE t (uniform on [0, 1], or t = 0 for the clean-latent ablation `train.noise=clean`), both latents
   noised with them, BT/BTT loss on r(x_t^A) − r(x_t^B) with per-dimension label masks. Checkpoints and resume
   as every other job (`raypipe.train.common.worker_loop`).
4. Evaluation on the held-out pairs: accuracy per dimension per t bucket ([0,.25), [.25,.5), [.5,.75), [.75,1])
   -> OUT/metrics.json (+ a plot), the model in OUT/final (`LatentReward.from_pretrained`).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from raypipe.config import ConfigError, SynthConfig, load_config, save_config, to_dict
from raypipe.flow.family import TinyWanConfig
from raypipe.flow.pairs import ClipConfig
from raypipe.train.common import TrainerSettings, fit_trainer

NOISE = ("uniform", "clean")
BUCKETS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclasses.dataclass
class LatentRewardSettings(TrainerSettings):
    """train-latent-reward's `train` section: the shared trainer fields (raypipe.train.common) + these."""
    cpus_per_worker: float = 0.5
    zero_stage: int = 0
    lr: float = 3e-4
    batch: int = 16  # pairs per worker per step
    epochs: int = 10
    log_every: int = 10
    loss: str = "btt"  # bt | btt
    theta: float = 5.0
    noise: str = "uniform"  # uniform: t ~ U[0, 1] (noise-aware); clean: t = 0 (the paper's weaker ablation)


@dataclasses.dataclass
class LatentRewardConfig:
    generator: str | None = None  # a WanPipeline folder (the generator the guidance will steer); None: tiny random
    tiny: TinyWanConfig = dataclasses.field(default_factory=TinyWanConfig)
    dims: list[str] = dataclasses.field(default_factory=lambda: ["VQ", "MQ", "TA"])
    k_blocks: int = 2
    trainable: str = "all"  # all | blocks | heads
    dtype: str = "float32"  # bfloat16 on GPUs (train.use_gpu): the trunk's weights and DeepSpeed's bf16 mode
    manifest: str | None = None  # preference manifest or relabel output (a folder or part file)
    labels: str = "auto"  # auto | manifest (y_<DIM>) | model (relabel's model_<DIM>)
    video_root: str | None = None
    val_fraction: float = 0.15
    latent_cache: str = "latents"  # relative to OUT unless absolute
    clip: ClipConfig = dataclasses.field(default_factory=ClipConfig)
    synth: SynthConfig = dataclasses.field(default_factory=lambda: SynthConfig(pairs=512, seed=31))
    train: LatentRewardSettings = dataclasses.field(default_factory=LatentRewardSettings)
    eval_draws: int = 4  # noise draws per held-out pair and t bucket
    out: str = "latent-reward-out"
    address: str | None = None
    progress: bool = True


# --- labels and rows -------------------------------------------------------------------------------------------
def pair_labels(table: pa.Table, dims: list[str], source: str = "auto") -> tuple[pa.Table, str]:
    """Rows (row_id, uri_A, uri_B, prompt, error, y_<DIM> int8 with nulls) from a manifest or relabel output.
    `source` auto: the relabel model's labels (`model_<DIM>`) where present, else the manifest's y_<DIM>."""
    have_model = all(f"model_{d}" in table.column_names for d in dims)
    have_y = all(f"y_{d}" in table.column_names for d in dims)
    if source == "auto":
        source = "model" if have_model else "manifest"
    if source == "model" and not have_model:
        raise ConfigError(f"labels=model needs relabel output with model_<DIM> for {dims}")
    if source == "manifest" and not have_y:
        raise ConfigError(f"labels=manifest needs a preference manifest with labels for {dims}")
    cols = {"row_id": table.column("row_id"), "uri_A": table.column("uri_A"), "uri_B": table.column("uri_B"),
            "prompt": table.column("prompt")}
    for d in dims:
        if source == "model":
            values = table.column(f"model_{d}").to_pylist()
            y = [None if v is None else {"A": 1, "B": -1, "same": 0}[v] for v in values]
            cols[f"y_{d}"] = pa.array(y, pa.int8())
        else:
            cols[f"y_{d}"] = table.column(f"y_{d}").cast(pa.int8())
    rows = pa.table(cols)
    if "error" in table.column_names:  # relabel error rows: their videos are unreadable
        rows = rows.append_column("input_error", table.column("error"))
    return rows, source


def split_rows(rows: pa.Table, val_fraction: float, seed: int) -> tuple[pa.Table, pa.Table]:
    """Deterministic split by row_id (a seeded permutation), so reruns and resumes see the same pairs."""
    n = rows.num_rows
    n_val = int(round(val_fraction * n)) if val_fraction > 0 else 0
    order = np.random.default_rng(seed).permutation(n)
    val = np.zeros(n, bool)
    val[order[:n_val]] = True
    return rows.filter(pa.array(~val)), rows.filter(pa.array(val))


def labels_of(batch: pa.Table, dims: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(y [B, D] float with 0 where unlabelled, mask [B, D] bool)."""
    ys, masks = [], []
    for d in dims:
        col = batch.column(f"y_{d}").to_pylist()
        masks.append([v is not None for v in col])
        ys.append([0 if v is None else v for v in col])
    return torch.tensor(ys, dtype=torch.float32).T, torch.tensor(masks).T


def noisy_pair(z_a: torch.Tensor, z_b: torch.Tensor, t: torch.Tensor, eps: torch.Tensor):
    """Both latents noised with the SAME eps and t (the preference is assumed unchanged by identical noise)."""
    from raypipe.flow.losses import noised

    return noised(z_a, eps, t)[0], noised(z_b, eps, t)[0]


def draw_t(n: int, generator: torch.Generator, noise: str) -> torch.Tensor:
    if noise == "clean":
        return torch.zeros(n)
    if noise == "uniform":
        return torch.rand(n, generator=generator)
    raise ConfigError(f"train.noise must be one of {NOISE}, got {noise!r}")


def pair_loss(engine, t_cfg, z_a, z_b, text, y, mask, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """BT/BTT loss of the latent reward on one batch of latent pairs, both noised with the same t and eps (drawn
    on the CPU from `generator`); labels y / mask [B, D] move to the model's device."""
    from raypipe.reward.losses import reward_loss

    tt = draw_t(z_a.shape[0], generator, t_cfg.noise)
    eps = torch.randn(z_a.shape, generator=generator)
    x_a, x_b = noisy_pair(z_a, z_b, tt, eps)
    r = engine(torch.cat([x_a, x_b]), torch.cat([tt, tt]), torch.cat([text, text]))
    n = z_a.shape[0]
    loss, stats = reward_loss(t_cfg.loss, r[:n], r[n:], y.to(r.device), mask.to(r.device), theta=t_cfg.theta)
    acc = stats.get("accuracy", float("nan"))
    return loss, ({"accuracy": acc} if acc == acc else {})


# --- the worker loop -----------------------------------------------------------------------------------------------
def train_loop_per_worker(config: dict) -> None:
    import os

    import deepspeed

    from raypipe.config import build_config
    from raypipe.flow.family import WanFamily
    from raypipe.flow.latents import tensor_of
    from raypipe.nrg.model import LatentReward
    from raypipe.train.common import deepspeed_config, worker_loop

    cfg = build_config(LatentRewardConfig, config["cfg"])
    t = cfg.train
    torch.manual_seed(t.seed)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    gen = WanFamily.load(cfg.generator, dtype=cfg.dtype)
    model = LatentReward.from_generator(gen.transformer, tuple(cfg.dims), cfg.k_blocks, cfg.trainable)
    model.gradient_checkpointing = t.gradient_checkpointing
    del gen
    deepspeed.init_distributed(dist_backend="nccl" if t.use_gpu else "gloo")
    total_steps = config["total_steps"]
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(t, total_steps, bf16=t.use_gpu and cfg.dtype == "bfloat16", micro_batch=t.batch))

    def step(batch, generator):
        z_a = torch.from_numpy(tensor_of(batch, "latents_A")).float()
        z_b = torch.from_numpy(tensor_of(batch, "latents_B")).float()
        text = torch.from_numpy(tensor_of(batch, "text")).float()
        y, mask = labels_of(batch, cfg.dims)
        return pair_loss(engine, t, z_a, z_b, text, y, mask, generator)

    def save_final(d: Path) -> None:
        engine.module.save_pretrained(d, extra={"generator": cfg.generator, "noise": t.noise, "loss": t.loss})

    worker_loop(engine, t, total_steps, step, save_final, tensorboard_dir=config.get("tensorboard_dir"))


# --- evaluation ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def bucket_accuracy(model, val: pa.Table, dims: list[str], draws: int = 4, seed: int = 0,
                    buckets=BUCKETS, batch: int = 64) -> dict:
    """Pairwise accuracy (decisive labels; r_A = r_B counts wrong) per dimension per t bucket, t drawn uniformly
    inside each bucket, `draws` noise draws per pair, the same eps for both sides."""
    from raypipe.flow.latents import tensor_of

    ok = val
    if "error" in val.column_names:
        import pyarrow.compute as pc

        ok = val.filter(pc.is_null(val.column("error")))
    g = torch.Generator().manual_seed(seed)
    out: dict = {}
    edges = list(zip(buckets[:-1], buckets[1:]))
    correct = np.zeros((len(edges), len(dims)))
    total = np.zeros((len(edges), len(dims)))
    for start in range(0, ok.num_rows, batch):
        part = ok.slice(start, batch)
        z_a = torch.from_numpy(tensor_of(part, "latents_A")).float()
        z_b = torch.from_numpy(tensor_of(part, "latents_B")).float()
        text = torch.from_numpy(tensor_of(part, "text")).float()
        y, mask = labels_of(part, dims)
        decisive = (mask & (y != 0)).numpy()
        for bi, (lo, hi) in enumerate(edges):
            for _ in range(draws):
                tt = lo + (hi - lo) * torch.rand(z_a.shape[0], generator=g)
                eps = torch.randn(z_a.shape, generator=g)
                x_a, x_b = noisy_pair(z_a, z_b, tt, eps)
                delta = (model(x_a, tt, text) - model(x_b, tt, text)).float().cpu().numpy()
                right = np.sign(delta) == y.numpy()
                correct[bi] += (right & decisive).sum(0)
                total[bi] += decisive.sum(0)
    for j, d in enumerate(dims):
        out[d] = {f"[{lo:g},{hi:g})": (float(correct[bi, j] / total[bi, j]) if total[bi, j] else None)
                  for bi, (lo, hi) in enumerate(edges)}
    out["n_pairs"] = int(ok.num_rows)
    out["draws"] = draws
    return out


def plot_bucket_accuracy(metrics: dict, dims: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    for d in dims:
        keys = list(metrics[d])
        ax.plot(range(len(keys)), [np.nan if metrics[d][k] is None else metrics[d][k] for k in keys], marker="o",
                label=d)
        ax.set_xticks(range(len(keys)), keys)
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set_xlabel("t bucket (1 = pure noise)")
    ax.set_ylabel("pairwise accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- the job -------------------------------------------------------------------------------------------------------
def _cached(rows: pa.Table, cfg: LatentRewardConfig, path: Path, key: dict):
    """Latents of both videos of every pair (the shared latent cache, keys A and B)."""
    from raypipe.flow.latents import cached_latents

    return cached_latents(rows, cfg.generator, cfg.clip, {"uri_A": "A", "uri_B": "B"}, path, key)


def run_train_latent_reward(cfg: LatentRewardConfig) -> dict:
    import pyarrow.parquet as pq

    from raypipe.flow.family import make_tiny_wan
    from raypipe.nrg.model import TRAINABLE, LatentReward
    from raypipe.ray_utils import configure_data_context, init_ray
    from raypipe.train.flow_config import FlowTrainConfig
    from raypipe.train.flow_job import _read_pairs

    t = cfg.train
    if t.noise not in NOISE:
        raise ConfigError(f"train.noise must be one of {NOISE}, got {t.noise!r}")
    if cfg.trainable not in TRAINABLE:
        raise ConfigError(f"trainable must be one of {TRAINABLE}, got {cfg.trainable!r}")
    if t.loss not in ("bt", "btt"):
        raise ConfigError(f"train.loss must be bt or btt, got {t.loss!r}")
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    manifest = cfg.manifest
    if manifest is None:
        from raypipe.video.synth import make_synthpref

        print(f"no manifest: synthesising SynthPref ({cfg.synth.pairs} pairs, seed {cfg.synth.seed})", flush=True)
        make_synthpref(out / "data", cfg.synth, progress=cfg.progress)
        manifest = str(out / "data" / "manifest.parquet")
    if cfg.generator is None:
        cfg = dataclasses.replace(cfg, generator=str(make_tiny_wan(out / "tiny_wan", cfg.tiny, 0)))
    reader = load_config(FlowTrainConfig, None, [f"data.weights={json.dumps({d: 1.0 for d in cfg.dims})}"])
    if cfg.video_root:
        reader = dataclasses.replace(reader, data=dataclasses.replace(reader.data, video_root=cfg.video_root))
    rows, source = pair_labels(_read_pairs(manifest, reader), list(cfg.dims), cfg.labels)
    train_rows, val_rows = split_rows(rows, cfg.val_fraction, t.seed)
    if train_rows.num_rows < t.num_workers * t.batch:
        raise ConfigError(f"{train_rows.num_rows} training pairs are fewer than one step needs "
                          f"({t.num_workers} workers x {t.batch})")
    save_config(cfg, out)
    init_ray(cfg.address)
    configure_data_context(cfg.progress)
    cache = Path(cfg.latent_cache) if Path(cfg.latent_cache).is_absolute() else out / cfg.latent_cache
    key = {"manifest": str(manifest), "generator": cfg.generator, "clip": dataclasses.asdict(cfg.clip),
           "labels": source, "val_fraction": cfg.val_fraction, "seed": t.seed}
    t0 = time.perf_counter()
    ds = _cached(train_rows, cfg, cache / "train", key | {"split": "train", "rows": train_rows.num_rows})
    if val_rows.num_rows:
        _cached(val_rows, cfg, cache / "val", key | {"split": "val", "rows": val_rows.num_rows})
    cache_s = time.perf_counter() - t0
    steps_per_epoch = max(1, train_rows.num_rows // (t.num_workers * t.batch))
    total_steps = steps_per_epoch * t.epochs if t.max_steps is None else min(steps_per_epoch * t.epochs, t.max_steps)
    print(f"train-latent-reward: {train_rows.num_rows} train / {val_rows.num_rows} val pairs ({source} labels), "
          f"K={cfg.k_blocks}, noise={t.noise}, {t.num_workers} workers x {t.batch}, {total_steps} steps", flush=True)
    progress, wall = fit_trainer(train_loop_per_worker, {"cfg": to_dict(cfg), "total_steps": total_steps,
                                                         "tensorboard_dir": str(out / "tensorboard")},
                                 t, out, "train-latent-reward", {"train": ds})
    (out / "curve.json").write_text(json.dumps(progress["curve"], indent=2))
    metrics: dict = {}
    if val_rows.num_rows:
        model = LatentReward.from_pretrained(out / "final")
        val = pq.read_table(str(cache / "val"))
        metrics = bucket_accuracy(model, val, list(cfg.dims), cfg.eval_draws, seed=t.seed + 1)
        plot_bucket_accuracy(metrics, list(cfg.dims), out / "accuracy_by_t.png")
    summary = {"steps": progress["step"], "train_pairs": train_rows.num_rows, "val_pairs": val_rows.num_rows,
               "labels": source, "noise": t.noise, "k_blocks": cfg.k_blocks, "cache_s": round(cache_s, 1),
               "train_wall_s": round(wall, 1), "error_rows": progress.get("error_rows", 0),
               "resumes": progress["resumes"], "last": progress["curve"][-1] if progress["curve"] else {}, "worker_nodes": progress.get("nodes"),
               "val_accuracy_by_t": metrics, "final": str(out / "final")}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"train-latent-reward: {summary['steps']} steps in {summary['train_wall_s']} s; held-out accuracy by t: "
          f"{json.dumps({d: metrics.get(d) for d in cfg.dims})}; model in {out / 'final'}", flush=True)
    return summary


def train_latent_reward_from_args(config_path, out, overrides) -> int:
    extra = [f"out={json.dumps(out)}"] if out else []
    run_train_latent_reward(load_config(LatentRewardConfig, config_path, list(overrides or []) + extra))
    return 0
