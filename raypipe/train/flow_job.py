"""`raypipe train-flow --algo {pretrain,sft,dpo,rwr}` (= jobs/train_flow.py): the generator on Ray Train + DeepSpeed.

Driver side: resolve the generator (a WanPipeline folder, or a tiny random one written to OUT/tiny_wan), the data
(a manifest, or a seeded SynthPref set when none is given), build the training rows for the algorithm, stream
them through Ray Data decode tasks into the workers, run the TorchTrainer, copy the result to OUT/final and
write the curve (JSON + PNG) and summary.json.

Rows per algorithm (from a preference manifest; `data.source` = labels | margins picks how winners are chosen):
- pretrain: every distinct (video, prompt) — plain flow matching on the whole transformer (prompt dropout for CFG)
- sft: the winners of the scalarised pairs;  dpo: (winner, loser, prompt);
- rwr: both videos of every pair with reward Σ_d w_d·score (relabel output `score_<S>_<DIM>`, else `MOS_<S>_<DIM>`).
OUT/final is a LoRA folder loadable with `WanPipeline.load_lora_weights` (pretrain: a whole WanPipeline folder).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from raypipe.config import ConfigError, load_config, save_config, to_dict
from raypipe.train.flow_config import ALGOS, FlowTrainConfig


# --- rows ----------------------------------------------------------------------------------------------------
def _reward_of(table: pa.Table, side: str, weights: dict[str, float]) -> np.ndarray | None:
    total = np.zeros(table.num_rows)
    for dim, w in weights.items():
        col = next((c for c in (f"score_{side}_{dim}", f"MOS_{side}_{dim}") if c in table.column_names), None)
        if col is None:
            return None
        total += float(w) * np.array([np.nan if v is None else v for v in table.column(col).to_pylist()], float)
    return total


def true_captions(table: pa.Table, side: str) -> list[str] | None:
    """SynthPref videos contradict their pair's prompt on purpose (TA levels): pretraining captions each video
    with what it shows, from the gt_color/gt_shape/gt_direction columns when the manifest has them."""
    from raypipe.video.synth import make_prompt

    cols = [f"gt_{a}_{side}" for a in ("color", "shape", "direction")]
    if not all(c in table.column_names for c in cols):
        return None
    return [make_prompt(c, s, d) for c, s, d in zip(*(table.column(c).to_pylist() for c in cols))]


def training_rows(table: pa.Table, algo: str, source: str, weights: dict[str, float],
                  min_margin: float = 0.0) -> tuple[pa.Table, dict]:
    """The rows the workers train on, and counts of what was kept and dropped (nothing disappears silently)."""
    from raypipe.flow.pairs import pairs_from_labels, pairs_from_margins

    if algo not in ALGOS:
        raise ConfigError(f"train.algo must be one of {ALGOS}, got {algo!r}")
    prompts = table.column("prompt").to_pylist()
    if algo == "pretrain":
        seen = {}
        for side in ("A", "B"):
            for uri, prompt in zip(table.column(f"uri_{side}").to_pylist(), true_captions(table, side) or prompts):
                seen.setdefault((uri, prompt), None)
        rows = pa.table({"uri": [k[0] for k in seen], "prompt": [k[1] for k in seen]})
        return rows, {"rows": table.num_rows, "videos": rows.num_rows,
                      "captions": "true attributes (gt_*)" if true_captions(table, "A") else "pair prompts"}
    if algo == "rwr":
        ra, rb = _reward_of(table, "A", weights), _reward_of(table, "B", weights)
        if ra is None or rb is None:
            raise ConfigError("rwr needs per-video scores: relabel output (score_A_<DIM>) or MOS_A_<DIM> columns "
                              f"for every weighted dimension {sorted(weights)}")
        uris = table.column("uri_A").to_pylist() + table.column("uri_B").to_pylist()
        reward = np.concatenate([ra, rb])
        keep = np.flatnonzero(np.isfinite(reward))
        rows = pa.table({"uri": [uris[i] for i in keep], "prompt": [(prompts + prompts)[i] for i in keep],
                         "reward": pa.array(reward[keep], pa.float64())})
        return rows, {"rows": table.num_rows, "videos": rows.num_rows, "dropped_no_score": int(len(reward) - len(keep))}
    build = pairs_from_labels if source == "labels" else pairs_from_margins
    if source not in ("labels", "margins"):
        raise ConfigError(f"data.source must be labels or margins, got {source!r}")
    pairs, counts = build(table, weights, min_margin)
    if algo == "sft":
        return pa.table({"uri": pairs.column("uri_w"), "prompt": pairs.column("prompt")}), counts
    return pairs.select(["uri_w", "uri_l", "prompt"]), counts


def decode_clips_block(batch: pa.Table, clip, columns: dict[str, str]) -> pa.Table:
    """Ray Data task: each `uri` column -> a fixed-shape clip column (`columns` maps uri column -> frames column);
    `error` holds the first failure's kind (the worker skips and counts such rows)."""
    from raypipe.data.pairs import frames_array
    from raypipe.flow.pairs import generator_clip
    from raypipe.video.decode import VideoError

    errors: list[str | None] = [None] * batch.num_rows
    empty = np.zeros((clip.frames, clip.height, clip.width, 3), np.uint8)
    for uri_col, frames_col in columns.items():
        frames = []
        for i, uri in enumerate(batch.column(uri_col).to_pylist()):
            result = generator_clip(uri, clip)
            if isinstance(result, VideoError):
                errors[i] = errors[i] or result.kind
                frames.append(empty)
            else:
                frames.append(result)
        batch = batch.append_column(frames_col, frames_array(frames))
    return batch.append_column("error", pa.array(errors, pa.string()))


# --- the job -------------------------------------------------------------------------------------------------
def _prepare(cfg: FlowTrainConfig, out: Path) -> tuple[FlowTrainConfig, str]:
    from raypipe.flow.family import make_tiny_wan
    from raypipe.video.synth import make_synthpref

    manifest = cfg.data.manifest
    if manifest is None:
        print(f"no data.manifest: synthesising SynthPref ({cfg.synth.pairs} pairs, seed {cfg.synth.seed})",
              flush=True)
        make_synthpref(out / "data", cfg.synth, progress=cfg.progress)
        manifest = str(out / "data" / "manifest.parquet")
    if cfg.model.name_or_path is None:
        path = make_tiny_wan(out / "tiny_wan", cfg.model.tiny, cfg.model.tiny_seed)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=str(path)))
    return cfg, manifest


def _read_pairs(path: str, cfg: FlowTrainConfig) -> pa.Table:
    """A preference manifest (validated, labels as y_<DIM>) or `raypipe relabel` output (a folder or part file
    with row_id, uri_A/uri_B and margin_/score_ columns, used as written)."""
    import pyarrow.parquet as pq

    from raypipe.data.manifest import load_manifest

    if Path(path).is_dir() or cfg.data.source == "margins":
        table = pq.read_table(path)
        missing = [c for c in ("row_id", "uri_A", "uri_B", "prompt") if c not in table.column_names]
        if missing:
            raise ConfigError(f"{path}: not relabel output of a preference manifest (missing {missing})")
        return table
    manifest = load_manifest(path, list(cfg.data.weights), cfg.data.video_root, require_labels=False)
    if manifest.kind != "pairs":
        raise ConfigError(f"train-flow reads a preference manifest or relabel output; {path} is pointwise")
    return manifest.table


def _latent_cache(cfg: FlowTrainConfig, rows: pa.Table, out: Path):
    """The cached dataset for these rows: read it back, or build it once (Ray Data decode tasks + encoder actors)."""
    from raypipe.flow.latents import cached_latents

    path = Path(cfg.data.latent_cache)
    if not path.is_absolute():
        path = out / path
    key = {"algo": cfg.train.algo, "rows": rows.num_rows, "clip": dataclasses.asdict(cfg.clip),
           "generator": cfg.model.name_or_path, "weights": cfg.data.weights, "source": cfg.data.source}
    keys = {"uri_w": "w", "uri_l": "l"} if cfg.train.algo == "dpo" else {"uri": ""}
    return cached_latents(rows, cfg.model.name_or_path, cfg.clip, keys, path, key)


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


def run_train_flow(cfg: FlowTrainConfig) -> dict:
    import ray.data

    from raypipe.ray_utils import configure_data_context, init_ray
    from raypipe.train.common import fit_trainer
    from raypipe.train.flow_loop import train_loop_per_worker

    t = cfg.train
    if t.algo not in ALGOS:
        raise ConfigError(f"train.algo must be one of {ALGOS}, got {t.algo!r}")
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg, manifest_path = _prepare(cfg, out)
    table = _read_pairs(manifest_path, cfg)
    rows, counts = training_rows(table, t.algo, cfg.data.source, cfg.data.weights, cfg.data.min_margin)
    if rows.num_rows < t.num_workers * t.batch:
        raise ConfigError(f"{rows.num_rows} training rows ({counts}) are fewer than one step needs "
                          f"({t.num_workers} workers x {t.batch})")
    save_config(cfg, out)
    init_ray(cfg.address)
    configure_data_context(cfg.progress)
    columns = {"uri_w": "frames_w", "uri_l": "frames_l"} if t.algo == "dpo" else {"uri": "frames"}
    if cfg.data.latent_cache:
        ds = _latent_cache(cfg, rows, out)
    else:
        step_rows = max(1, cfg.data.rows_per_block)
        blocks = [rows.slice(i, step_rows) for i in range(0, rows.num_rows, step_rows)]
        ds = ray.data.from_arrow(blocks).map_batches(
            decode_clips_block, fn_kwargs={"clip": cfg.clip, "columns": columns}, batch_format="pyarrow",
            batch_size=None, zero_copy_batch=True, num_cpus=cfg.data.decode_cpus)
    steps_per_epoch = max(1, rows.num_rows // (t.num_workers * t.batch))
    total_steps = steps_per_epoch * t.epochs if t.max_steps is None else min(steps_per_epoch * t.epochs,
                                                                              t.max_steps)
    print(f"train-flow {t.algo}: {rows.num_rows} rows ({counts}), {t.num_workers} workers x {t.batch}/step, "
          f"{total_steps} steps, ZeRO-{t.zero_stage}", flush=True)
    progress, wall = fit_trainer(train_loop_per_worker, {"cfg": to_dict(cfg), "total_steps": total_steps,
                                                         "tensorboard_dir": str(out / "tensorboard")},
                                 t, out, f"train-flow-{t.algo}", {"train": ds})
    (out / "curve.json").write_text(json.dumps(progress["curve"], indent=2))
    if progress["curve"]:
        plot_flow_curve(progress["curve"], out / "curve.png")
    last = progress["curve"][-1] if progress["curve"] else {}
    summary = {"algo": t.algo, "steps": progress["step"], "rows": rows.num_rows, "row_counts": counts,
               "error_rows": progress.get("error_rows", 0), "resumes": progress["resumes"], "worker_nodes": progress.get("nodes"),
               "wall_s": round(wall, 1), "final": str(out / "final"), "last": last,
               "generator": cfg.model.name_or_path}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"train-flow {t.algo}: {summary['steps']} steps in {summary['wall_s']} s, last {last}; "
          f"result in {out / 'final'}", flush=True)
    return summary


def train_flow_from_args(algo, config_path, out, overrides) -> int:
    extra = [f"{k}={json.dumps(v)}" for k, v in (("train.algo", algo), ("out", out)) if v is not None]
    cfg = load_config(FlowTrainConfig, config_path, list(overrides or []) + extra)
    run_train_flow(cfg)
    return 0

