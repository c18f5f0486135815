"""`raypipe sample-pairs`: preference pairs from the generator's own samples.

    raypipe sample-pairs --out gen-pairs generator=gen-out/flow/final reward=reward-out/final prompts=128 k=4 \\
        "weights={MQ: 1}"
    raypipe train-flow --config configs/flow_tiny.yaml train.algo=dpo data.manifest=gen-pairs/pairs data.source=margins

1. K samples per prompt from the current generator (noise seeds seed·K + k; CFG), written as mp4 with a pointwise
   manifest OUT/samples.parquet (path, prompt, prompt_id, k);
2. `raypipe relabel` of that manifest with the reward checkpoint (Ray Data, resumable) -> OUT/relabel;
3. per prompt, the scalarised reward r = Σ_d w_d · norm_d (score_d without norm stats): best vs worst -> OUT/pairs/
   part-00000.parquet shaped like relabel output on a preference manifest (row_id, uri_A = best, uri_B = worst,
   prompt, error, score_A_/score_B_/margin_/model_<DIM>), which train-flow (`data.source=margins`) and
   train-latent-reward (`data.labels=model`) read directly. Prompts with fewer than 2 scored samples or equal best and
   worst are counted, not paired.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raypipe.config import ClipConfig, ConfigError, save_config
from raypipe.data.location import local_output
from raypipe.data.prompts import read_prompts
from raypipe.data.weights import scalarize
from raypipe.nrg.sampling import guided_samples, load_generator
from raypipe.recipes import relabel
from raypipe.reward.relabel import model_labels
from raypipe.reward.scoring import checkpoint_dimensions, reward_options
from raypipe.video.encode import write_mp4


@dataclasses.dataclass
class SamplePairsConfig:
    generator: str = ""  # a WanPipeline folder (the generator whose samples become pairs)
    lora: str | None = None  # optional adapters from train-flow
    reward: str = ""  # VideoReward checkpoint (ours, or the released VideoAlign layout)
    # base model folder for a checkpoint in the released VideoAlign layout (default: its model_name_or_path)
    base: str | None = None
    # the official prompt_template.py (or a text file) for the videoalign template; default $RAYPIPE_VIDEOALIGN_TEMPLATE
    template_file: str | None = None
    prompts: str = "64"  # a number (seeded SynthPref prompts), a .txt / manifest, or prompts separated by "|"
    k: int = 4  # samples per prompt (>= 2)
    # r = sum_d w_d score_d picks best vs worst, e.g. {VQ: 1}
    weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"VQ": 1.0, "MQ": 1.0, "TA": 1.0})
    seed: int = 0  # noise seed of sample k: seed*k_total + k
    steps: int = 20  # sampling steps (Euler)
    cfg_scale: float = 4.0  # classifier-free guidance scale
    clip: ClipConfig = dataclasses.field(default_factory=lambda: ClipConfig(frames=9, height=32, width=32))
    fps: float = 8.0  # frame rate of the written mp4s
    batch: int = 16  # videos per sampling batch
    out: str = "sample-pairs-out"  # output folder
    address: str | None = None  # Ray cluster address; null: RAY_ADDRESS or a new local Ray
    progress: bool = True  # progress bars


def best_vs_worst(scored: pa.Table, dims: list[str], weights: dict[str, float]) -> tuple[pa.Table, dict]:
    """Per prompt_id: the sample with the highest scalarised reward vs the lowest (error rows excluded)."""
    use_norm = all(f"norm_{d}" in scored.column_names for d in dims)
    prefix = "norm_" if use_norm else "score_"
    unknown = sorted(set(weights) - set(dims))
    if unknown:
        raise ConfigError(f"weights name unknown dimensions {unknown} (the reward model has {dims})")
    ok = (
        np.array([e is None for e in scored.column("error").to_pylist()])
        if "error" in scored.column_names
        else np.ones(scored.num_rows, bool)
    )
    values = {d: np.array(scored.column(f"{prefix}{d}").to_pylist(), dtype=np.float64) for d in dims}
    raw = {d: np.array(scored.column(f"score_{d}").to_pylist(), dtype=np.float64) for d in dims}
    r = np.zeros(scored.num_rows) + scalarize({d: np.nan_to_num(values[d]) for d in dims}, weights)
    groups: dict[int, list[int]] = {}
    for i, pid in enumerate(scored.column("prompt_id").to_pylist()):
        if ok[i]:
            groups.setdefault(int(pid), []).append(i)
    rows, skipped_few, skipped_equal = [], 0, 0
    all_ids = set(int(p) for p in scored.column("prompt_id").to_pylist())
    skipped_few += len(all_ids - set(groups))
    for pid in sorted(groups):
        idx = groups[pid]
        if len(idx) < 2:
            skipped_few += 1
            continue
        best, worst = max(idx, key=lambda i: r[i]), min(idx, key=lambda i: r[i])
        if r[best] == r[worst]:
            skipped_equal += 1
            continue
        rows.append((pid, best, worst))
    uris = scored.column("uri").to_pylist()
    prompts = scored.column("prompt").to_pylist()
    cols = {
        "row_id": pa.array([p for p, _, _ in rows], pa.int64()),
        "uri_A": pa.array([uris[b] for _, b, _ in rows], pa.string()),
        "uri_B": pa.array([uris[w] for _, _, w in rows], pa.string()),
        "prompt": pa.array([prompts[b] for _, b, _ in rows], pa.string()),
        "error": pa.array([None] * len(rows), pa.string()),
        "r_gap": pa.array([float(r[b] - r[w]) for _, b, w in rows], pa.float64()),
    }
    for d in dims:
        a = np.array([raw[d][b] for _, b, _ in rows])
        b_ = np.array([raw[d][w] for _, _, w in rows])
        cols[f"score_A_{d}"] = pa.array(a, pa.float64())
        cols[f"score_B_{d}"] = pa.array(b_, pa.float64())
        cols[f"margin_{d}"] = pa.array(a - b_, pa.float64())
        cols[f"model_{d}"] = pa.array(model_labels(a - b_, 0.0), pa.string())
    counts = {
        "prompts": len(all_ids),
        "pairs": len(rows),
        "skipped_fewer_than_2_scored": skipped_few,
        "skipped_equal_reward": skipped_equal,
        "error_samples": int((~ok).sum()),
        "scalarised_on": prefix.rstrip("_"),
        "mean_r_gap": float(np.mean([r[b] - r[w] for _, b, w in rows])) if rows else None,
    }
    return pa.table(cols), counts


def run(cfg: SamplePairsConfig) -> dict:
    local_output(cfg.out, "its pairs and manifests name the videos by local path; copy the folder up afterwards")
    if not cfg.reward:
        raise ConfigError("reward is required (reward=CHECKPOINT, a VideoReward checkpoint)")
    if cfg.k < 2:
        raise ConfigError(f"k must be >= 2 samples per prompt, got {cfg.k}")
    dims = list(checkpoint_dimensions(cfg.reward))
    reward_options(cfg.reward, cfg.base, cfg.template_file)  # a missing base or template fails before sampling
    unknown = sorted(set(cfg.weights) - set(dims))
    if unknown:
        raise ConfigError(f"weights name unknown dimensions {unknown} (the reward model has {dims})")
    gen = load_generator(cfg.generator, cfg.lora)
    prompts = read_prompts(cfg.prompts, cfg.seed)
    shape = gen.latent_shape(cfg.clip.frames, cfg.clip.height, cfg.clip.width, check=True)
    out = Path(cfg.out).resolve()
    (out / "videos").mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    manifest = out / "samples.parquet"
    if not manifest.exists():  # sampling is deterministic: a rerun after a kill redoes only this stage
        _write_samples(cfg, gen, prompts, shape, out, manifest)
    summary_relabel = relabel.run(
        relabel.RelabelConfig(
            reward=cfg.reward,
            base=cfg.base,
            template_file=cfg.template_file,
            input=str(manifest),
            out=str(out / "relabel"),
            address=cfg.address,
            progress=cfg.progress,
        )
    )
    scored = pq.read_table(str(out / "relabel"))
    pairs, counts = best_vs_worst(scored, dims, cfg.weights)
    (out / "pairs").mkdir(exist_ok=True)
    pq.write_table(pairs, out / "pairs" / "part-00000.parquet")
    summary = {
        "samples": scored.num_rows,
        "k": cfg.k,
        "weights": cfg.weights,
        **counts,
        "relabel": {k: summary_relabel.get(k) for k in ("rows_ok", "rows_with_error", "videos_per_s")},
        "pairs_path": str(out / "pairs"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(
        f"sample-pairs: {counts['pairs']} pairs from {counts['prompts']} prompts x {cfg.k} samples "
        f"(mean scalarised gap {counts['mean_r_gap']}) -> {out / 'pairs'}",
        flush=True,
    )
    return summary


def _write_samples(cfg: SamplePairsConfig, gen, prompts: list[str], shape, out: Path, manifest: Path) -> None:
    """K unguided samples per prompt (noise seed seed·K + k) as mp4s, listed in a pointwise manifest."""
    paths, ids, ks = [], [], []
    for k in range(cfg.k):
        result = guided_samples(
            gen,
            None,
            prompts,
            {},
            0.0,
            seed=cfg.seed * cfg.k + k,
            steps=cfg.steps,
            cfg_scale=cfg.cfg_scale,
            shape=shape,
            batch=cfg.batch,
        )
        for i, video in enumerate(result["videos"]):
            path = out / "videos" / f"p{i:05d}_k{k}.mp4"
            write_mp4(video, path, cfg.fps)
            paths.append(str(path))
            ids.append(i)
            ks.append(k)
        print(f"sample-pairs: samples {k + 1}/{cfg.k} for {len(prompts)} prompts", flush=True)
    pq.write_table(pa.table({"path": paths, "prompt": [prompts[i] for i in ids], "prompt_id": ids, "k": ks}), manifest)
