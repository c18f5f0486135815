"""`raypipe relabel`: score a manifest, a folder or a glob of videos with a VideoReward checkpoint on Ray.

    raypipe relabel --checkpoint ckpt/final --input pairs.parquet --out relabeled [--concurrency 2]

Pipeline: distinct (uri, prompt) videos -> Ray Data decode tasks (CPU) -> a pool of scoring actors (one model
each, GPUs per actor on a cluster) -> the driver, which appends finished videos to `OUT/_progress/` every few
seconds. Killed and started again with the same arguments, it skips every video already there; the final
output is assembled from `_progress` only when every video is in, so each input row is written exactly once.

Outputs in OUT:
- `part-00000.parquet`, … in row_id order, one row per input row: the input columns, `row_id`, the resolved
  `uri*` columns, `error` (null or the kind; for a pair the first failing side's), `error_message`, and
  - pointwise / videos: `score_<DIM>` (raw), `norm_<DIM>` and `Overall` (when the checkpoint has norm stats);
  - pairs: `score_A_<DIM>`, `score_B_<DIM>`, `margin_<DIM>` = A − B, `model_<DIM>` in A/B/same (`same` when
    |margin| ≤ ε* of the dimension), and with norm stats `overall_A`, `overall_B`, `margin_Overall`,
    `model_Overall`; the original label columns stay beside them.
- `_summary.json`: rows by outcome, videos (this run / resumed), errors by kind, throughput, wall time.
- `_config.yaml`: the resolved config; `_progress/`: resume state. Names starting with `_` are skipped by
  Parquet dataset readers, so `pq.read_table(OUT)` / `ray.data.read_parquet(OUT)` read just the rows.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raypipe.config import ConfigError, SamplingConfig, load_config, save_config
from raypipe.relabel.inputs import RelabelInput, resolve_input
from raypipe.reward.scoring import (TIE_EPSILON_FILE, checkpoint_dimensions, distinct_videos, normalize, overall, read_norm_stats,
                                    read_tie_epsilon, resolve_sampling, score_videos)

PROGRESS_DIR = "_progress"
STATE_FILE = "state.json"
SUMMARY_FILE = "_summary.json"
CONFIG_FILE = "_config.yaml"
LABEL_NAMES = {1: "A", -1: "B", 0: "same"}


@dataclasses.dataclass
class RelabelConfig:
    checkpoint: str = ""  # a folder written by VideoReward.save_pretrained
    input: str = ""  # preference manifest, pointwise manifest, folder of videos, or glob
    out: str = "relabel-out"
    video_root: str | None = None  # relative manifest paths resolve against this (default: the manifest's folder)
    prompts: str | None = None  # `path,prompt` sidecar for a folder/glob (default: prompts.csv|parquet in it)
    sampling: SamplingConfig | None = None  # None: the checkpoint's sampling.json
    batch_size: int = 8  # most videos per forward pass
    token_budget: int | None = None  # most video tokens per forward pass (dynamic batching); None: no cap
    concurrency: int = 1  # scoring actors, each holding one model
    num_gpus: float = 0.0  # per scoring actor
    # CPUs reserved per scoring actor (on GPUs it mostly waits: the GPU is the resource) and per decode task.
    # 0.5 + 2 x 0.75 fills a 2-core machine with 2 decoders beside the actor; lowered automatically if needed.
    actor_cpus: float = 0.5
    decode_cpus: float = 0.75
    decode_rows: int = 32  # most videos per decode task (fewer when the input is small)
    dtype: str | None = None  # None: the checkpoint's dtype
    tie_epsilon: str | None = None  # "0.1" for every dimension or "VQ=0.1,MQ=0.2"; None: the checkpoint's ε*
    flush_every_s: float = 5.0  # how often finished videos are appended to OUT/_progress (what a kill can lose)
    rows_per_part: int = 100_000  # rows per output Parquet file
    address: str | None = None
    progress: bool = True


# --- pure pieces -------------------------------------------------------------------------------------------
def parse_tie_epsilon(text: str | None, dimensions) -> dict[str, float] | None:
    """"0.1" -> every dimension (and Overall); "VQ=0.1,MQ=0.2" -> those; None -> None."""
    if text is None or str(text).strip() == "":
        return None
    text = str(text)
    try:
        if "=" not in text:
            value = float(text)
            return {d: value for d in [*dimensions, "Overall"]}
        out = {}
        for part in text.split(","):
            key, value = part.split("=", 1)
            out[key.strip()] = float(value)
    except ValueError:
        raise ConfigError(f"tie_epsilon must be a number or DIM=number,… (got {text!r})") from None
    unknown = sorted(set(out) - {*dimensions, "Overall"})
    if unknown:
        raise ConfigError(f"tie_epsilon names unknown dimensions {unknown} (checkpoint has {list(dimensions)})")
    return out


def model_labels(margins: np.ndarray, epsilon: float) -> list[str | None]:
    """A when margin > ε, B when margin < −ε, same when |margin| ≤ ε or the scores are equal (so also with
    ε = −1, "never a tie"); None for a missing (NaN) margin."""
    out: list[str | None] = []
    for m in np.asarray(margins, dtype=np.float64):
        if np.isnan(m):
            out.append(None)
        elif abs(m) <= epsilon or m == 0:
            out.append("same")
        else:
            out.append("A" if m > 0 else "B")
    return out


def video_table(inp: RelabelInput) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """(distinct videos: video_id, uri, prompt; per side, the video_id of every input row)."""
    videos, per_column = distinct_videos(inp.table, inp.uri_columns())
    return videos, dict(zip(inp.sides, per_column.values()))


# --- resume state ------------------------------------------------------------------------------------------
class Progress:
    """Finished videos under OUT/_progress: `state.json` (what run this is) + `videos-NNNNNN.parquet` shards,
    each written to a temporary name and renamed, so a kill leaves whole shards only."""

    def __init__(self, out: Path, state: dict):
        self.dir = out / PROGRESS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / STATE_FILE
        if path.exists():
            old = json.loads(path.read_text())
            if old.get("fingerprint") != state["fingerprint"] or old.get("checkpoint") != state["checkpoint"]:
                raise ConfigError(f"{out} holds a different relabel run (input or checkpoint changed); use a new "
                                  f"--out or delete {out}")
            state = {**old, "resumes": old.get("resumes", 0) + 1}
        else:
            state = {**state, "resumes": 0}
        self.state = state
        path.write_text(json.dumps(state, indent=2))
        self.next_index = 1 + max([int(p.stem.split("-")[1]) for p in self.dir.glob("videos-*.parquet")] or [-1])

    def shards(self) -> list[Path]:
        return sorted(self.dir.glob("videos-*.parquet"))

    def done_ids(self) -> set[int]:
        done: set[int] = set()
        for shard in self.shards():
            done.update(pq.read_table(shard, columns=["video_id"]).column("video_id").to_pylist())
        return done

    def append(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        final = self.dir / f"videos-{self.next_index:06d}.parquet"
        tmp = self.dir / f".tmp-{final.name}"
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        self.next_index += 1

    def read_all(self) -> pa.Table:
        tables = [pq.read_table(s) for s in self.shards()]
        return pa.concat_tables(tables, promote_options="default") if tables else None


# --- assembly ----------------------------------------------------------------------------------------------
def _float_column(values: np.ndarray) -> pa.Array:
    return pa.array(values, pa.float64(), mask=np.isnan(values))


def assemble(inp: RelabelInput, per_side: dict[str, np.ndarray], scored: pa.Table, dimensions, norm_stats,
             epsilon: dict[str, float]) -> pa.Table:
    """One output row per input row, row_id order (see the module docstring for the columns)."""
    ids = scored.column("video_id").to_numpy()
    order = np.argsort(ids, kind="stable")
    first = order[np.concatenate([[True], np.diff(ids[order]) != 0])] if len(ids) else order  # keep 1 per id
    scored = scored.take(pa.array(first))
    ids = scored.column("video_id").to_numpy()
    n_videos = int(max(int(v.max()) for v in per_side.values()) + 1)
    if len(ids) != n_videos or (len(ids) and not np.array_equal(ids, np.arange(n_videos))):
        missing = sorted(set(range(n_videos)) - set(ids.tolist()))
        raise RuntimeError(f"{len(missing)} videos have no result (e.g. video_id {missing[:3]}); rerun to finish")
    raw = np.stack([scored.column(f"score_{d}").to_numpy(zero_copy_only=False).astype(np.float64)
                    for d in dimensions], axis=1)
    errors = scored.column("error").to_pylist()
    messages = scored.column("error_message").to_pylist()
    table = inp.table
    cols: dict[str, pa.Array] = {}
    row_errors: list[str | None] = [None] * table.num_rows
    row_messages: list[str | None] = [None] * table.num_rows
    sides = {}
    for side, vid in per_side.items():
        sides[side] = raw[vid]
        for i, v in enumerate(vid.tolist()):
            if errors[v] is not None:
                row_errors[i] = row_errors[i] or errors[v]
                text = f"{side}: {messages[v]}" if side else messages[v]
                row_messages[i] = text if row_messages[i] is None else row_messages[i] + " | " + text
    if inp.kind != "pairs":
        s = sides[""]
        for j, d in enumerate(dimensions):
            cols[f"score_{d}"] = _float_column(s[:, j])
        if norm_stats is not None:
            norm = normalize(s, norm_stats, dimensions)
            for j, d in enumerate(dimensions):
                cols[f"norm_{d}"] = _float_column(norm[:, j])
            cols["Overall"] = _float_column(overall(norm))
    else:
        a, b = sides["A"], sides["B"]
        for side, s in (("A", a), ("B", b)):
            for j, d in enumerate(dimensions):
                cols[f"score_{side}_{d}"] = _float_column(s[:, j])
        margins = {d: a[:, j] - b[:, j] for j, d in enumerate(dimensions)}
        if norm_stats is not None:
            oa, ob = overall(normalize(a, norm_stats, dimensions)), overall(normalize(b, norm_stats, dimensions))
            cols["overall_A"], cols["overall_B"] = _float_column(oa), _float_column(ob)
            margins["Overall"] = oa - ob
        for name, m in margins.items():
            cols[f"margin_{name}"] = _float_column(m)
        for name, m in margins.items():
            cols[f"model_{name}"] = pa.array(model_labels(m, epsilon.get(name, 0.0)), pa.string())
    for name in list(cols):
        if name in table.column_names:  # a re-relabelled output: the new result replaces the old column
            table = table.drop_columns([name])
    for name in ("error", "error_message"):
        if name in table.column_names:
            table = table.drop_columns([name])
    table = table.append_column("error", pa.array(row_errors, pa.string()))
    table = table.append_column("error_message", pa.array(row_messages, pa.string()))
    for name, arr in cols.items():
        table = table.append_column(name, arr)
    return table


def write_parts(table: pa.Table, out: Path, rows_per_part: int) -> list[str]:
    """Row-ordered Parquet parts (old parts removed first; each written then renamed)."""
    for old in out.glob("part-*.parquet"):
        old.unlink()
    step = max(1, int(rows_per_part))
    n = max(1, -(-table.num_rows // step))
    names = []
    for k in range(n):
        name = f"part-{k:05d}.parquet"
        tmp = out / f".tmp-{name}"
        pq.write_table(table.slice(k * step, step), tmp)
        os.replace(tmp, out / name)
        names.append(name)
    return names


# --- the job -----------------------------------------------------------------------------------------------
def _prepare(cfg: RelabelConfig):
    """Everything that can fail on bad input, before any Ray work."""
    if not cfg.checkpoint or not cfg.input:
        raise ConfigError("checkpoint and input are required (--checkpoint DIR --input MANIFEST|FOLDER|GLOB)")
    try:
        dimensions = checkpoint_dimensions(cfg.checkpoint)
        norm_stats = read_norm_stats(cfg.checkpoint, dimensions)
        stored_eps = read_tie_epsilon(cfg.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"checkpoint: {e}") from None
    epsilon = parse_tie_epsilon(cfg.tie_epsilon, dimensions)
    notes = []
    if epsilon is None:
        epsilon = stored_eps
        if not epsilon:
            notes.append(f"no tie thresholds (checkpoint has no {TIE_EPSILON_FILE}, no --tie-epsilon): model "
                         f"labels are 'same' only for equal scores")
    if norm_stats is None:
        notes.append("checkpoint has no norm_stats.json: no normalised scores / Overall")
    inp = resolve_input(cfg.input, dimensions, cfg.video_root, cfg.prompts)
    return inp, dimensions, norm_stats, epsilon, notes


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
    ds = score_videos(todo, cfg.checkpoint, sampling, cfg.concurrency, cfg.batch_size, cfg.num_gpus, cfg.dtype,
                      token_budget=cfg.token_budget, decode_rows=cfg.decode_rows, actor_cpus=cfg.actor_cpus,
                      decode_cpus=cfg.decode_cpus)
    keep = ["video_id", "error", "error_message", *[f"score_{d}" for d in dimensions]]
    bar = tqdm(total=n_total, initial=len(done), unit="video", desc="relabel", disable=not cfg.progress,
               dynamic_ncols=True)
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


def run_relabel(cfg: RelabelConfig) -> dict:
    """Score every input row (resuming from OUT/_progress), write the parts and summary; returns the summary."""
    from raypipe.ray_utils import configure_data_context, init_ray

    t0 = time.perf_counter()
    inp, dimensions, norm_stats, epsilon, notes = _prepare(cfg)  # before Ray: bad input fails fast
    notes = inp.notes + notes
    sampling, sampling_source = resolve_sampling(cfg.checkpoint, cfg.sampling)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(dataclasses.replace(cfg, sampling=sampling), out, CONFIG_FILE)
    videos, per_side = video_table(inp)
    state = Progress(out, {"fingerprint": inp.fingerprint(), "checkpoint": os.path.abspath(cfg.checkpoint),
                           "rows": inp.table.num_rows, "videos": videos.num_rows, "kind": inp.kind})
    done = state.done_ids()
    resumed = len(done)
    timing = _new_timing()
    score_t0 = time.perf_counter()
    if resumed < videos.num_rows:
        init_ray(cfg.address)
        configure_data_context(progress=False)  # our own bar counts videos; Ray Data's would interleave with it
        timing = _score_remaining(cfg, videos, done, dimensions, sampling, state, videos.num_rows)
    score_s = time.perf_counter() - score_t0
    scored = timing["scored"]
    results = state.read_all()
    table = assemble(inp, per_side, results, dimensions, norm_stats, epsilon)
    parts = write_parts(table, out, cfg.rows_per_part)
    row_errors = Counter(e for e in table.column("error").to_pylist() if e is not None)
    summary = {
        "input": inp.source, "kind": inp.kind, "checkpoint": cfg.checkpoint, "dimensions": dimensions,
        "rows": table.num_rows, "rows_ok": table.num_rows - sum(row_errors.values()),
        "rows_with_error": dict(sorted(row_errors.items())),
        "videos": videos.num_rows, "videos_scored_this_run": scored, "videos_from_previous_runs": resumed,
        "resumes": state.state["resumes"], "video_errors": _video_errors(results),
        "videos_by_node": dict(timing["by_node"]),  # this run's videos per scoring actor's Ray node
        "videos_per_s": round(scored / score_s, 3) if scored and score_s > 0 else None,
        "first_batch_s": round(timing["first_batch_s"], 2) if timing["first_batch_s"] is not None else None,
        "scoring_wall_s": round(score_s, 2), "wall_s": round(time.perf_counter() - t0, 2),
        "tie_epsilon": epsilon, "sampling": dataclasses.asdict(sampling), "sampling_from": sampling_source,
        "parts": parts, "complete": True, "notes": notes,
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    _print_summary(summary)
    return summary


def _video_errors(scored: pa.Table) -> dict[str, int]:
    if scored is None:
        return {}
    ids = scored.column("video_id").to_pylist()
    errs = scored.column("error").to_pylist()
    seen: dict[int, str | None] = {}
    for v, e in zip(ids, errs):
        seen.setdefault(v, e)
    return dict(sorted(Counter(e for e in seen.values() if e is not None).items()))


def _print_summary(s: dict) -> None:
    rate = f", {s['videos_per_s']} videos/s" if s["videos_per_s"] else ""
    print(f"relabel: {s['rows']} rows ({s['rows_ok']} ok, errors {s['rows_with_error'] or 'none'}); "
          f"{s['videos']} videos ({s['videos_scored_this_run']} scored now, {s['videos_from_previous_runs']} "
          f"from earlier runs{rate}); wall {s['wall_s']} s")
    for note in s["notes"]:
        print(f"note: {note}")


def relabel_from_args(checkpoint, input, out, config_path, overrides, **flags) -> int:
    """CLI glue: flags override the config file and `key=value` overrides; returns the exit code."""
    pairs = [("checkpoint", checkpoint), ("input", input), ("out", out), *flags.items()]
    extra = [f"{k}={json.dumps(v)}" for k, v in pairs if v is not None]
    cfg = load_config(RelabelConfig, config_path, list(overrides or []) + extra)
    run_relabel(cfg)
    return 0
