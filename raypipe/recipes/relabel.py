"""`raypipe relabel`: score a manifest, a folder or a glob of videos with a VideoReward checkpoint on Ray — or
rate them with a LiFT critic.

    raypipe relabel --out relabeled reward=reward-out/final input=pairs.parquet [concurrency=2]
    raypipe relabel --out rated --critic critic-out/final input=pairs.parquet

Pipeline: a first walk over the input rows (a batch of `read_rows` at a time, before any Ray work: bad rows fail
here) finds the distinct (uri, prompt) videos -> Ray Data decode tasks (CPU) -> a pool of scoring actors (one
model each, GPUs per actor on a cluster) -> the driver, which appends finished videos to `OUT/_progress/` every
few seconds. Killed and started again with the same arguments, it skips every video already there. When every
video is in, a second walk joins each batch of rows to its videos' results and writes the parts, so each input
row is written exactly once and the driver's memory grows with distinct videos, not with rows.

Outputs in OUT:
- `part-00000.parquet`, … in row_id order, one row per input row: the input columns, `row_id`, the resolved
  `uri*` columns, `error` (null or the kind; for a pair the first failing side's), `error_message`, and
  - pointwise / videos: `score_<DIM>` (raw), `norm_<DIM>` and `Overall` (when the checkpoint has norm stats);
  - pairs: `score_A_<DIM>`, `score_B_<DIM>`, `margin_<DIM>` = A − B, `model_<DIM>` in A/B/same (`same` when
    |margin| ≤ ε* of the dimension), and with norm stats `overall_A`, `overall_B`, `margin_Overall`,
    `model_Overall`; the original label columns stay beside them.
  - with `critic=`: `rating_<DIM>` / `reason_<DIM>` / `lift_weight` (pairs: `rating_A_<DIM>`, ..., `lift_weight_A`,
    `lift_weight_B`), `raypipe.critic.relabel`; an answer that does not start with a rating is an
    `unparsable_answer` error row.
- `_summary.json`: rows by outcome, videos (this run / resumed), errors by kind, throughput, wall time.
- `_config.yaml`: the resolved config; `_progress/`: resume state. Names starting with `_` are skipped by
  Parquet dataset readers, so `pq.read_table(OUT)` / `ray.data.read_parquet(OUT)` read just the rows.
OUT may be a local folder or an object-store prefix (`s3://bucket/relabeled`, `gs://…`; `raypipe.data.location`):
parts, summary and resume state all go there, so a job on a cluster without a shared filesystem resumes from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from raypipe.config import ConfigError, SamplingConfig, config_yaml
from raypipe.critic.model import critic_dimensions
from raypipe.critic.relabel import assemble_critic, with_lift_weight
from raypipe.data.inputs import resolve_input
from raypipe.data.location import output_location
from raypipe.data.ratings import DEFAULT_WEIGHT_MAP, check_weight_map
from raypipe.distributed.cluster import configure_data_context, init_ray
from raypipe.distributed.scoring import score_videos
from raypipe.reward.relabel import (
    PROGRESS_DIR,
    PartWriter,
    Progress,
    assemble,
    one_result_per_video,
    parse_tie_epsilon,
    scan,
    video_errors,
)
from raypipe.reward.scoring import (
    TIE_EPSILON_FILE,
    checkpoint_dimensions,
    read_norm_stats,
    read_tie_epsilon,
    resolve_sampling,
    reward_options,
)

SUMMARY_FILE = "_summary.json"
CONFIG_FILE = "_config.yaml"
__all__ = ["RelabelConfig", "run", "PROGRESS_DIR", "SUMMARY_FILE", "CONFIG_FILE"]


@dataclasses.dataclass
class RelabelConfig:
    reward: str = ""  # a VideoReward checkpoint folder (train-reward OUT/final)
    critic: str = ""  # or a LiFT critic checkpoint (train-critic OUT/final): ratings, reasons and lift_weight
    # the critic's rating -> weight map for lift_weight (SPEC §8; default Good 0.9, Normal 0.2, Bad 0.05)
    weight_map: dict[str, float] | None = None
    input: str = ""  # preference manifest, pointwise manifest, folder of videos, or glob
    # base model folder for a checkpoint in the released VideoAlign layout (default: its model_name_or_path)
    base: str | None = None
    # the official prompt_template.py (or a text file) for the videoalign template; default $RAYPIPE_VIDEOALIGN_TEMPLATE
    template_file: str | None = None
    out: str = "relabel-out"  # output folder, or an object-store prefix (s3://bucket/relabeled)
    video_root: str | None = None  # relative manifest paths resolve against this (default: the manifest's folder)
    prompts: str | None = None  # `path,prompt` sidecar for a folder/glob (default: prompts.csv|parquet in it)
    sampling: SamplingConfig | None = None  # None: the checkpoint's sampling.json
    batch: int = 8  # most videos per forward pass
    token_budget: int | None = None  # most video tokens per forward pass (dynamic batching); None: no cap
    concurrency: int = 1  # scoring actors, each holding one model
    num_gpus: float = 0.0  # per scoring actor
    # CPUs reserved per scoring actor (on GPUs it mostly waits: the GPU is the resource) and per decode task.
    # 0.5 + 2 x 0.75 fills a 2-core machine with 2 decoders beside the actor; lowered automatically if needed.
    actor_cpus: float = 0.5
    decode_cpus: float = 0.75  # CPUs per decode task
    decode_rows: int = 32  # most videos per decode task (fewer when the input is small)
    dtype: str | None = None  # None: the checkpoint's dtype
    # 'same' when |margin| <= ε: 0.1 (every dimension) or {VQ: 0.1, MQ: 0.2}; None: the checkpoint's ε*
    tie_epsilon: float | dict[str, float] | None = None
    flush_every_s: float = 5.0  # how often finished videos are appended to OUT/_progress (what a kill can lose)
    rows_per_part: int = 100_000  # rows per output Parquet file
    read_rows: int = 65_536  # input rows per batch of the two walks over the input (the driver holds one batch)
    address: str | None = None  # Ray cluster address; null: RAY_ADDRESS or a new local Ray
    progress: bool = True  # progress bars


# --- the job -----------------------------------------------------------------------------------------------
def _prepare(cfg: RelabelConfig):
    """Everything that can fail on bad input, before any Ray work."""
    if bool(cfg.reward) == bool(cfg.critic) or not cfg.input:
        raise ConfigError(
            "one of reward / critic, and input, are required (reward=CHECKPOINT or critic=CHECKPOINT, "
            "input=MANIFEST|FOLDER|GLOB)"
        )
    if cfg.critic:
        return _prepare_critic(cfg)
    try:
        dimensions = checkpoint_dimensions(cfg.reward)
        norm_stats = read_norm_stats(cfg.reward, dimensions)
        stored_eps = read_tie_epsilon(cfg.reward)
        reward_options(cfg.reward, cfg.base, cfg.template_file)  # a missing base or template fails here
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"checkpoint: {e}") from None
    epsilon = parse_tie_epsilon(cfg.tie_epsilon, dimensions)
    notes = []
    if epsilon is None:
        epsilon = stored_eps
        if not epsilon:
            notes.append(
                f"no tie thresholds (checkpoint has no {TIE_EPSILON_FILE}, no tie_epsilon): model "
                f"labels are 'same' only for equal scores"
            )
    if norm_stats is None:
        notes.append("checkpoint has no norm_stats.json: no normalised scores / Overall")
    inp = resolve_input(cfg.input, dimensions, cfg.video_root, cfg.prompts, cfg.read_rows)
    return inp, dimensions, norm_stats, epsilon, notes


def _prepare_critic(cfg: RelabelConfig):
    try:
        dimensions = critic_dimensions(cfg.critic)
        check_weight_map(cfg.weight_map or DEFAULT_WEIGHT_MAP)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"critic: {e}") from None
    inp = resolve_input(cfg.input, dimensions, cfg.video_root, cfg.prompts, cfg.read_rows)
    return inp, dimensions, None, {}, []


def _new_timing() -> dict:
    """Scoring counters: videos scored, seconds to the first result, videos per scoring node."""
    return {"scored": 0, "first_batch_s": None, "by_node": Counter()}


def _score_remaining(cfg, videos, done, dimensions, sampling, progress_state: Progress, n_total: int) -> dict:
    """Stream the not-yet-done videos through Ray; append results every `flush_every_s`.

    Returns {"scored": videos, "first_batch_s": time to the first result (actor start-up, model load)}."""
    from tqdm import tqdm

    todo = videos.filter(pc.invert(pc.is_in(videos.column("video_id"), pa.array(sorted(done), pa.int64()))))
    timing = _new_timing()
    if todo.num_rows == 0:
        return timing
    t0 = time.perf_counter()
    ds = score_videos(
        todo,
        cfg.critic or cfg.reward,
        sampling,
        cfg.concurrency,
        cfg.batch,
        cfg.num_gpus,
        cfg.dtype,
        token_budget=cfg.token_budget,
        decode_rows=cfg.decode_rows,
        actor_cpus=cfg.actor_cpus,
        decode_cpus=cfg.decode_cpus,
        reward_options=None if cfg.critic else reward_options(cfg.reward, cfg.base, cfg.template_file),
        kind="critic" if cfg.critic else "reward",
    )
    outputs = [f"{k}_{d}" for d in dimensions for k in ("rating", "reason")] if cfg.critic else []
    # scored_on (the actor's node) stays in the progress shards: which node did the work survives a restart
    keep = ["video_id", "scored_on", "error", "error_message", *(outputs or [f"score_{d}" for d in dimensions])]
    bar = tqdm(
        total=n_total, initial=len(done), unit="video", desc="relabel", disable=not cfg.progress, dynamic_ncols=True
    )
    pending: list[pa.Table] = []
    last_flush, scored = time.monotonic(), 0
    try:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            timing["by_node"].update(batch.column("scored_on").to_pylist())
            batch = batch.select(keep)
            pending.append(batch)
            scored += batch.num_rows
            if timing["first_batch_s"] is None:
                timing["first_batch_s"] = time.perf_counter() - t0
            bar.update(batch.num_rows)
            if time.monotonic() - last_flush >= cfg.flush_every_s:
                progress_state.append(pa.concat_tables(pending))
                pending, last_flush = [], time.monotonic()
    finally:
        if pending:  # also on Ctrl-C / an exception: what finished is kept
            progress_state.append(pa.concat_tables(pending))
        bar.close()
    timing["scored"] = scored
    return timing


def run(cfg: RelabelConfig) -> dict:
    """Score every input row (resuming from OUT/_progress), write the parts and summary; returns the summary."""
    t0 = time.perf_counter()
    inp, dimensions, norm_stats, epsilon, notes = _prepare(cfg)  # before Ray: bad input fails fast
    notes = inp.notes + notes
    checkpoint = cfg.critic or cfg.reward
    sampling, sampling_source = resolve_sampling(checkpoint, cfg.sampling)
    out = output_location(cfg.out)  # a local folder or an object-store prefix (s3://bucket/relabeled)
    out.write_text(CONFIG_FILE, config_yaml(dataclasses.replace(cfg, sampling=sampling)))
    walk_t0 = time.perf_counter()
    index, n_rows, fingerprint = scan(inp)  # first walk over the rows, before Ray: a bad row fails here
    scan_s = time.perf_counter() - walk_t0
    videos = index.table()
    state = Progress(
        out,
        {
            "fingerprint": fingerprint,
            "checkpoint": os.path.abspath(checkpoint),
            "rows": n_rows,
            "videos": videos.num_rows,
            "kind": inp.kind,
        },
    )
    done = state.done_ids()
    resumed = len(done)
    timing = _new_timing()
    score_t0 = time.perf_counter()
    if resumed < videos.num_rows:
        init_ray(cfg.address)
        configure_data_context(progress=False)  # our own bar counts videos; Ray Data's would interleave with it
        timing = _score_remaining(cfg, videos, done, dimensions, sampling, state, videos.num_rows)
    score_s = time.perf_counter() - score_t0
    results = state.read_all()
    write_t0 = time.perf_counter()
    scored = one_result_per_video(results, videos.num_rows)
    parts, outcomes = _write_rows(cfg, inp, index, scored, out, dimensions, norm_stats, epsilon, n_rows)
    summary = {
        "input": inp.source,
        "kind": inp.kind,
        "checkpoint": checkpoint,
        "model": "critic" if cfg.critic else "reward",
        "dimensions": dimensions,
        **outcomes,
        **_video_outcomes(videos, results, timing, resumed, score_s, state.state["resumes"]),
        "wall_s": round(time.perf_counter() - t0, 2),
        # the row side: the walk that finds the videos (before scoring) and the one that writes the parts
        "rows_scan_s": round(scan_s, 2),
        "rows_write_s": round(time.perf_counter() - write_t0, 2),
        "tie_epsilon": epsilon,
        "sampling": dataclasses.asdict(sampling),
        "sampling_from": sampling_source,
        "parts": parts,
        "complete": True,
        "notes": notes,
    }
    if state.skipped:
        summary["notes"].append(f"unreadable progress shards set aside and their videos scored again: {state.skipped}")
    out.write_text(SUMMARY_FILE, json.dumps(summary, indent=2))
    _print_summary(summary)
    return summary


def _write_rows(cfg, inp, index, scored, out, dimensions, norm_stats, epsilon, n_rows) -> tuple[list[str], dict]:
    """The second walk over the rows: each batch joined to its videos' results and appended to the parts, so the
    driver holds one batch and one part, however many rows there are. (part names, rows by outcome)"""
    from tqdm import tqdm

    if cfg.critic:
        scored = with_lift_weight(scored, dimensions, cfg.weight_map)
    writer = PartWriter(out, cfg.rows_per_part)
    rows, row_errors = 0, Counter()
    bar = tqdm(unit="row", desc="write", disable=not cfg.progress, dynamic_ncols=True, leave=False)
    n_videos = scored.num_rows
    for batch in inp.batches():
        per_side = dict(zip(inp.sides, index.ids(batch, inp.uri_columns()).values()))
        if len(index) > n_videos:  # a row names a video the first walk did not see
            raise ConfigError(f"{inp.source} changed while it was being relabelled (new videos); run again")
        if cfg.critic:
            table = assemble_critic(batch, per_side, scored, dimensions)
        else:
            table = assemble(batch, per_side, scored, dimensions, norm_stats, epsilon)
        writer.append(table)
        rows += table.num_rows
        row_errors.update({k: v for k, v in _value_counts(table.column("error")).items() if k is not None})
        bar.update(table.num_rows)
    bar.close()
    if rows != n_rows:
        raise ConfigError(f"{inp.source} changed while it was being relabelled ({n_rows} rows, now {rows}); run again")
    outcomes = {
        "rows": rows,
        "rows_ok": rows - sum(row_errors.values()),
        "rows_with_error": dict(sorted(row_errors.items())),
    }
    return writer.close(), outcomes


def _value_counts(column) -> dict:
    return {c["values"]: c["counts"] for c in pc.value_counts(column).to_pylist()}


def _video_outcomes(videos, results, timing: dict, resumed: int, score_s: float, resumes: int) -> dict:
    """Videos scored now and in earlier runs, errors by kind, per-node counts and throughput."""
    scored = timing["scored"]
    return {
        "videos": videos.num_rows,
        "videos_scored_this_run": scored,
        "videos_from_previous_runs": resumed,
        "resumes": resumes,
        "video_errors": video_errors(results),
        "videos_by_node": dict(timing["by_node"]),  # this run's videos per scoring actor's Ray node
        "videos_per_s": round(scored / score_s, 3) if scored and score_s > 0 else None,
        "first_batch_s": round(timing["first_batch_s"], 2) if timing["first_batch_s"] is not None else None,
        "scoring_wall_s": round(score_s, 2),
    }


def _print_summary(s: dict) -> None:
    rate = f", {s['videos_per_s']} videos/s" if s["videos_per_s"] else ""
    print(
        f"relabel: {s['rows']} rows ({s['rows_ok']} ok, errors {s['rows_with_error'] or 'none'}); "
        f"{s['videos']} videos ({s['videos_scored_this_run']} scored now, {s['videos_from_previous_runs']} "
        f"from earlier runs{rate}); wall {s['wall_s']} s"
    )
    for note in s["notes"]:
        print(f"note: {note}")
