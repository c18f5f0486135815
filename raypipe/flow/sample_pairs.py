"""`raypipe sample-pairs`: preference pairs from the generator's own samples (issue 5, pair building (b)).

    raypipe sample-pairs --generator gen-out/flow/final --reward reward-out/final --prompts 128 --k 4 \\
        --weights MQ=1 --out gen-pairs
    raypipe train-flow --algo dpo --config configs/flow_tiny.yaml data.manifest=gen-pairs/pairs data.source=margins

1. K samples per prompt from the current generator (noise seeds seed·K + k; CFG), written as mp4 with a pointwise
   manifest OUT/samples.parquet (path, prompt, prompt_id, k);
2. `raypipe relabel` of that manifest with the reward checkpoint (Ray Data, resumable) -> OUT/relabel;
3. per prompt, the scalarised reward r = Σ_d w_d · norm_d (score_d without norm stats): best vs worst -> OUT/pairs/
   part-00000.parquet shaped like relabel output on a preference manifest (row_id, uri_A = best, uri_B = worst,
   prompt, error, score_A_/score_B_/margin_/model_<DIM>), which train-flow (`data.source=margins`) and
   train-latent-reward (`labels=model`) read directly. Prompts with fewer than 2 scored samples or equal best and
   worst are counted, not paired.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from raypipe.config import ConfigError, load_config, save_config


@dataclasses.dataclass
class SamplePairsConfig:
    generator: str = ""
    lora: str | None = None
    reward: str = ""  # VideoReward checkpoint
    prompts: str = "64"  # a number (seeded SynthPref prompts), a .txt / manifest, or prompts separated by "|"
    k: int = 4
    weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"VQ": 1.0, "MQ": 1.0, "TA": 1.0})
    seed: int = 0
    steps: int = 20
    cfg_scale: float = 4.0
    frames: int = 9
    height: int = 32
    width: int = 32
    fps: float = 8.0
    batch: int = 16
    out: str = "sample-pairs-out"
    address: str | None = None
    progress: bool = True


def best_vs_worst(scored: pa.Table, dims: list[str], weights: dict[str, float]) -> tuple[pa.Table, dict]:
    """Per prompt_id: the sample with the highest scalarised reward vs the lowest (error rows excluded)."""
    use_norm = all(f"norm_{d}" in scored.column_names for d in dims)
    prefix = "norm_" if use_norm else "score_"
    unknown = sorted(set(weights) - set(dims))
    if unknown:
        raise ConfigError(f"weights name unknown dimensions {unknown} (the reward model has {dims})")
    ok = np.array([e is None for e in scored.column("error").to_pylist()]) if "error" in scored.column_names \
        else np.ones(scored.num_rows, bool)
    values = {d: np.array(scored.column(f"{prefix}{d}").to_pylist(), dtype=np.float64) for d in dims}
    raw = {d: np.array(scored.column(f"score_{d}").to_pylist(), dtype=np.float64) for d in dims}
    r = sum(float(weights.get(d, 0.0)) * np.nan_to_num(values[d]) for d in dims)
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
    cols = {"row_id": pa.array([p for p, _, _ in rows], pa.int64()),
            "uri_A": pa.array([uris[b] for _, b, _ in rows], pa.string()),
            "uri_B": pa.array([uris[w] for _, _, w in rows], pa.string()),
            "prompt": pa.array([prompts[b] for _, b, _ in rows], pa.string()),
            "error": pa.array([None] * len(rows), pa.string()),
            "r_gap": pa.array([float(r[b] - r[w]) for _, b, w in rows], pa.float64())}
    for d in dims:
        a = np.array([raw[d][b] for _, b, _ in rows])
        b_ = np.array([raw[d][w] for _, _, w in rows])
        cols[f"score_A_{d}"] = pa.array(a, pa.float64())
        cols[f"score_B_{d}"] = pa.array(b_, pa.float64())
        cols[f"margin_{d}"] = pa.array(a - b_, pa.float64())
        cols[f"model_{d}"] = pa.array(["A" if m > 0 else "B" if m < 0 else "same" for m in a - b_], pa.string())
    counts = {"prompts": len(all_ids), "pairs": len(rows), "skipped_fewer_than_2_scored": skipped_few,
              "skipped_equal_reward": skipped_equal, "error_samples": int((~ok).sum()),
              "scalarised_on": prefix.rstrip("_"), "mean_r_gap": float(np.mean([r[b] - r[w] for _, b, w in rows]))
              if rows else None}
    return pa.table(cols), counts


def run_sample_pairs(cfg: SamplePairsConfig) -> dict:
    import pyarrow.parquet as pq

    from raypipe.nrg.generate import guided_samples, latent_shape, load_generator, prompt_list
    from raypipe.relabel.job import RelabelConfig, run_relabel
    from raypipe.reward.scoring import checkpoint_dimensions
    from raypipe.video.encode import write_mp4

    if not cfg.reward:
        raise ConfigError("--reward is required (a VideoReward checkpoint)")
    if cfg.k < 2:
        raise ConfigError(f"k must be >= 2 samples per prompt, got {cfg.k}")
    dims = list(checkpoint_dimensions(cfg.reward))
    unknown = sorted(set(cfg.weights) - set(dims))
    if unknown:
        raise ConfigError(f"weights name unknown dimensions {unknown} (the reward model has {dims})")
    gen = load_generator(cfg.generator, cfg.lora)
    prompts = prompt_list(cfg.prompts, cfg.seed)
    shape = latent_shape(gen, cfg.frames, cfg.height, cfg.width)
    out = Path(cfg.out).resolve()
    (out / "videos").mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    manifest = out / "samples.parquet"
    if not manifest.exists():  # sampling is deterministic: a rerun after a kill redoes only this stage
        paths, ids, ks = [], [], []
        for k in range(cfg.k):
            result = guided_samples(gen, None, prompts, {}, 0.0, seed=cfg.seed * cfg.k + k, steps=cfg.steps,
                                    cfg_scale=cfg.cfg_scale, shape=shape, batch=cfg.batch)
            for i, video in enumerate(result["videos"]):
                path = out / "videos" / f"p{i:05d}_k{k}.mp4"
                write_mp4(video, path, cfg.fps)
                paths.append(str(path))
                ids.append(i)
                ks.append(k)
            print(f"sample-pairs: samples {k + 1}/{cfg.k} for {len(prompts)} prompts", flush=True)
        pq.write_table(pa.table({"path": paths, "prompt": [prompts[i] for i in ids], "prompt_id": ids, "k": ks}),
                       manifest)
    summary_relabel = run_relabel(RelabelConfig(checkpoint=cfg.reward, input=str(manifest), out=str(out / "relabel"),
                                                address=cfg.address, progress=cfg.progress))
    scored = pq.read_table(str(out / "relabel"))
    pairs, counts = best_vs_worst(scored, dims, cfg.weights)
    (out / "pairs").mkdir(exist_ok=True)
    pq.write_table(pairs, out / "pairs" / "part-00000.parquet")
    summary = {"samples": scored.num_rows, "k": cfg.k, "weights": cfg.weights, **counts,
               "relabel": {k: summary_relabel.get(k) for k in ("rows_ok", "rows_with_error", "videos_per_s")},
               "pairs_path": str(out / "pairs")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"sample-pairs: {counts['pairs']} pairs from {counts['prompts']} prompts x {cfg.k} samples "
          f"(mean scalarised gap {counts['mean_r_gap']}) -> {out / 'pairs'}", flush=True)
    return summary


def sample_pairs_from_args(config_path, out, overrides) -> int:
    extra = [f"out={json.dumps(out)}"] if out else []
    run_sample_pairs(load_config(SamplePairsConfig, config_path, list(overrides or []) + extra))
    return 0
