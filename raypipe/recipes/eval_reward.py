"""`raypipe eval-reward`: pairwise accuracy of a VideoReward checkpoint on a labelled preference manifest (SPEC §4).

    raypipe eval-reward --out eval-out reward=reward-out/final manifest=pairs.parquet [sampling.fps=4]
    raypipe eval-reward --checkpoint VideoReward --manifest videogen-rewardbench.csv video_root=DIR   # released

Writes to OUT:
- `scores.parquet`: every manifest row once, in row_id order: the manifest columns (incl. `row_id`, `uri_*`,
  `y_<DIM>`), `score_A_<DIM>`, `score_B_<DIM>` (raw), `margin_<DIM>` = A − B, and when the checkpoint has norm
  stats `overall_A`, `overall_B`, `margin_Overall` (sums of normalised scores); `error` (null, or the kind of the
  first failing side) and `error_message` (every failing side).
- `metrics.json`: `{DIM: report, ..., "Overall": ... (manifest has `Overall` labels and checkpoint has
  norm stats), "errors": {kind: rows}, "n_rows", "n_scored_videos"}` (+ `"notes"` when something was left out);
  accuracy counts rows with a label for that dimension and no error. NaN is written as null. A report is
  `pairwise_report` + `"official": {"accuracy_with_ties", "accuracy_without_ties"}` (VideoAlign's
  calc_accuracy.py on the same rows; off with `official_accuracy=false`) + `"by_model": {generator: report
  without by_model}` when the manifest has `A_model` and `B_model` (pairs where the generator is A or B).
- `leaderboard.md`: the VideoGen-RewardBench leaderboard (Overall/VQ/MQ/TA in %, ours and the official
  script's) and the per-generator table, also printed at the end (`reward/leaderboard.py`).
- `accuracy_vs_epsilon.png` (ties-included accuracy against ε, ε* marked) and the resolved `config.yaml`.
- `tie_epsilon.json` ({DIM: ε*}); with `save_epsilon=true` also written into the checkpoint, where `relabel`
  reads it to label a pair `same` when |margin| ≤ ε*.

The official script (eval_videogen_rewardbench.py) counts every row; a row that failed to decode here is left out.
Each distinct (uri, prompt) is decoded and scored once, however many pairs share it.
Sampling: `sampling` in the config if set (the whole section; unset fields take SamplingConfig defaults, not the
checkpoint's), else the checkpoint's `sampling.json`, else SamplingConfig() (fps 2) — see `resolve_sampling`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa

from raypipe.config import ConfigError, SamplingConfig, config_yaml
from raypipe.data.location import output_location
from raypipe.data.manifest import Manifest, load_manifest, normalize_label
from raypipe.distributed.cluster import configure_data_context, init_ray
from raypipe.distributed.scoring import score_videos
from raypipe.reward.leaderboard import by_model_reports, dimension_report, leaderboard_markdown
from raypipe.reward.metrics import accuracy_curve, pairwise_report
from raypipe.reward.scoring import (
    TIE_EPSILON_FILE,
    checkpoint_dimensions,
    distinct_videos,
    normalize,
    overall,
    read_norm_stats,
    resolve_sampling,
    reward_options,
)

SIDES = ("A", "B")
MODEL_COLUMNS = ("A_model", "B_model")  # VideoGen-RewardBench: the generator of each side
LEADERBOARD_FILE = "leaderboard.md"


@dataclasses.dataclass
class EvalConfig:
    reward: str = ""  # a VideoReward checkpoint folder (train-reward OUT/final, or the released VideoAlign layout)
    manifest: str = ""  # labelled preference manifest (.parquet or .csv), e.g. VideoGen-RewardBench's CSV
    # base model folder for a checkpoint in the released VideoAlign layout (default: its model_name_or_path)
    base: str | None = None
    # the official prompt_template.py (or a text file) for the videoalign template; default $RAYPIPE_VIDEOALIGN_TEMPLATE
    template_file: str | None = None
    out: str = "eval-out"  # output folder, or an object-store prefix (s3://bucket/eval)
    video_root: str | None = None  # relative video paths resolve against this (default: the manifest's folder)
    sampling: SamplingConfig | None = None  # None: the checkpoint's sampling.json, else SamplingConfig()
    concurrency: int = 1  # scoring actors (each holds one model)
    batch: int = 8  # videos per forward pass
    num_gpus: float = 0.0  # per actor
    dtype: str | None = None  # None: the checkpoint's dtype
    address: str | None = None  # Ray cluster address; None: RAY_ADDRESS or a local Ray
    progress: bool = True  # progress bars
    save_epsilon: bool = False  # also store ε* per dimension in the checkpoint (tie_epsilon.json), used by relabel
    official_accuracy: bool = True  # also report the official VideoAlign script's accuracies (metrics, leaderboard)


def _prepare(cfg: EvalConfig) -> tuple[Manifest, list[str], dict | None]:
    """Everything that can fail on bad input, in the driver, before any Ray work."""
    if not cfg.reward or not cfg.manifest:
        raise ConfigError("reward and manifest are required (reward=CHECKPOINT manifest=FILE)")
    try:
        dimensions = checkpoint_dimensions(cfg.reward)
        norm_stats = read_norm_stats(cfg.reward, dimensions)
        reward_options(cfg.reward, cfg.base, cfg.template_file)  # a missing base or template fails here
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"checkpoint: {e}") from None
    manifest = load_manifest(cfg.manifest, dimensions, cfg.video_root, require_labels=True)
    if manifest.kind != "pairs":
        raise ConfigError(f"eval-reward needs a preference manifest (path_A, path_B); {cfg.manifest} is pointwise")
    return manifest, dimensions, norm_stats


def collect_scores(ds, dimensions) -> dict[int, tuple[list, str | None, str | None]]:
    """video_id -> (raw scores or Nones, error, error_message), checking each video came back exactly once."""
    out: dict[int, tuple[list, str | None, str | None]] = {}
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        cols = {c: batch.column(c).to_pylist() for c in ["video_id", "error", "error_message"]}
        dims = [batch.column(f"score_{d}").to_pylist() for d in dimensions]
        for i, vid in enumerate(cols["video_id"]):
            if vid in out:
                raise RuntimeError(f"video {vid} was scored twice")  # never expected; never silent
            out[vid] = ([col[i] for col in dims], cols["error"][i], cols["error_message"][i])
    return out


def pair_scores(manifest: Manifest, ids: dict[str, np.ndarray], scored: dict, dimensions, norm_stats) -> pa.Table:
    """The manifest with both sides' scores, margins and errors attached (row_id order kept); `ids` maps
    `uri_A`/`uri_B` to each row's video_id (from `distinct_videos`)."""
    table = manifest.table
    missing = sorted({int(v) for col in ids.values() for v in col} - set(scored))
    if missing:
        raise RuntimeError(f"{len(missing)} videos did not come back from scoring (e.g. video_id {missing[0]})")
    raw, errors, messages = {}, [None] * table.num_rows, [None] * table.num_rows
    for side in SIDES:
        rows = [scored[int(v)] for v in ids[f"uri_{side}"]]
        raw[side] = np.array([[np.nan if v is None else v for v in r[0]] for r in rows], dtype=np.float64)
        for i, (_, kind, message) in enumerate(rows):
            if kind is not None:
                errors[i] = errors[i] or kind
                text = f"{side}: {message}"
                messages[i] = text if messages[i] is None else messages[i] + " | " + text
    cols: dict[str, np.ndarray] = {}
    for side in SIDES:
        for j, dim in enumerate(dimensions):
            cols[f"score_{side}_{dim}"] = raw[side][:, j]
    for j, dim in enumerate(dimensions):
        cols[f"margin_{dim}"] = raw["A"][:, j] - raw["B"][:, j]
    if norm_stats is not None:
        for side in SIDES:
            cols[f"overall_{side}"] = overall(normalize(raw[side], norm_stats, dimensions))
        cols["margin_Overall"] = cols["overall_A"] - cols["overall_B"]
    for name, values in cols.items():
        table = table.append_column(name, pa.array(values, pa.float64(), mask=np.isnan(values)))
    table = table.append_column("error", pa.array(errors, pa.string()))
    return table.append_column("error_message", pa.array(messages, pa.string()))


def _labels_and_margins(
    scores: pa.Table, label_column: str, margin_column: str, labels: list | None = None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(h, m, kept row positions) over rows with a label and no error."""
    h = labels if labels is not None else scores.column(label_column).to_pylist()
    m = scores.column(margin_column).to_pylist()
    err = scores.column("error").to_pylist()
    keep = [i for i in range(len(h)) if h[i] is not None and err[i] is None and m[i] is not None]
    h_arr, m_arr = np.array([h[i] for i in keep], dtype=np.int64), np.array([m[i] for i in keep], dtype=np.float64)
    return h_arr, m_arr, keep


def _report(scores: pa.Table, label_column, margin_column, official: bool, labels=None) -> tuple[dict, tuple]:
    """(report with `official` and, when the table has A_model/B_model, `by_model`; (h, m) it used)."""
    h, m, keep = _labels_and_margins(scores, label_column, margin_column, labels)
    report = dimension_report(h, m, official)
    if all(c in scores.column_names for c in MODEL_COLUMNS):
        a, b = ([col[i] for i in keep] for col in (scores.column(c).to_pylist() for c in MODEL_COLUMNS))
        report["by_model"] = by_model_reports(h, m, a, b, official)
    return report, (h, m)


def compute_metrics(scores: pa.Table, dimensions, n_scored_videos: int, official: bool = True) -> tuple[dict, dict]:
    """(metrics.json content, {name: (h, m)} used) for a table written by `pair_scores`."""
    metrics, used, notes = {}, {}, []
    for dim in dimensions:
        if f"y_{dim}" not in scores.column_names:
            notes.append(f"{dim}: the manifest has no {dim} label column")
            continue
        metrics[dim], used[dim] = _report(scores, f"y_{dim}", f"margin_{dim}", official)
    if "Overall" in scores.column_names:
        if "margin_Overall" in scores.column_names:
            labels = [normalize_label(v) for v in scores.column("Overall").to_pylist()]
            metrics["Overall"], used["Overall"] = _report(scores, "Overall", "margin_Overall", official, labels)
        else:
            notes.append("Overall: omitted, the checkpoint has no norm_stats.json (Overall sums normalised scores)")
    errors = Counter(e for e in scores.column("error").to_pylist() if e is not None)
    metrics.update(errors=dict(sorted(errors.items())), n_rows=scores.num_rows, n_scored_videos=n_scored_videos)
    if notes:
        metrics["notes"] = notes
    return _nan_to_none(metrics), used


def _nan_to_none(obj):
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def plot_accuracy_vs_epsilon(used: dict, path) -> object:
    """Ties-included accuracy against ε per dimension, ε* marked (the point tie calibration picks)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (h, m) in used.items():
        if len(h) == 0:
            continue
        eps, acc = accuracy_curve(h, m)
        x = eps.copy()
        x[0] = 0.0  # "no ties" (ε = -1) holds until the smallest |m|: draw it from 0
        (line,) = ax.step(x, acc, where="post", label=name)
        best = pairwise_report(h, m)
        ax.plot([max(best["epsilon"], 0.0)], [best["acc_with_ties"]], "o", color=line.get_color())
    ax.set_xlabel("ε (predict a tie when |r_A − r_B| ≤ ε)")
    ax.set_ylabel("accuracy with ties")
    ax.set_title("Tie calibration (● = ε*)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)  # a path, or a file object (bytes for an object store)
    plt.close(fig)
    return path


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(metrics: dict, leaderboard: str) -> None:
    """The leaderboard (`leaderboard_markdown`), then ties and ε* per dimension, rows, errors and notes."""
    print(leaderboard)
    print(f"{'dim':<8} {'n':>6} {'ties':>6} {'eps*':>9}")
    for name, r in metrics.items():
        if isinstance(r, dict) and "acc_with_ties" in r:
            print(f"{name:<8} {r['n']:>6} {r['n_ties']:>6} {_fmt(r['epsilon'], '.4g'):>9}")
    print(f"rows {metrics['n_rows']}, videos scored {metrics['n_scored_videos']}, errors {metrics['errors']}")
    for note in metrics.get("notes", []):
        print(f"note: {note}")


def run(cfg: EvalConfig) -> dict:
    """Score every pair of the manifest with the checkpoint on Ray and write the outputs; returns metrics."""
    manifest, dimensions, norm_stats = _prepare(cfg)  # before Ray: bad input fails fast
    sampling, _ = resolve_sampling(cfg.reward, cfg.sampling)
    resolved = dataclasses.replace(cfg, sampling=sampling)
    out = output_location(cfg.out)  # a folder or an object-store prefix; unusable: one line, before Ray
    out.write_text("config.yaml", config_yaml(resolved))
    init_ray(cfg.address)
    configure_data_context(cfg.progress)
    videos, ids = distinct_videos(manifest.table, [f"uri_{side}" for side in SIDES])
    options = reward_options(cfg.reward, cfg.base, cfg.template_file)
    ds = score_videos(
        videos, cfg.reward, sampling, cfg.concurrency, cfg.batch, cfg.num_gpus, cfg.dtype, reward_options=options
    )
    scored = collect_scores(ds, dimensions)
    scores = pair_scores(manifest, ids, scored, dimensions, norm_stats)
    out.write_parquet("scores.parquet", scores)
    metrics, used = compute_metrics(scores, dimensions, n_scored_videos=len(scored), official=cfg.official_accuracy)
    out.write_text("metrics.json", json.dumps(metrics, indent=2))
    leaderboard = leaderboard_markdown(metrics, official=cfg.official_accuracy)
    out.write_text(LEADERBOARD_FILE, leaderboard)
    png = io.BytesIO()
    plot_accuracy_vs_epsilon(used, png)
    out.write_bytes("accuracy_vs_epsilon.png", png.getvalue())
    eps = {k: v["epsilon"] for k, v in metrics.items() if isinstance(v, dict) and v.get("epsilon") is not None}
    out.write_text(TIE_EPSILON_FILE, json.dumps(eps, indent=2))
    if cfg.save_epsilon:
        (Path(cfg.reward) / TIE_EPSILON_FILE).write_text(json.dumps(eps, indent=2))
    print_table(metrics, leaderboard)
    return metrics
