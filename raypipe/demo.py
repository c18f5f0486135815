"""`raypipe demo` / `make demo`: the whole story on a local Ray with the tiny models.

Stages so far: SynthPref -> Ray Data pair pipeline -> train VideoReward (Ray Train + DeepSpeed) -> evaluate it
(accuracy table, accuracy-vs-epsilon plot) -> relabel the pairs with it (model labels with ties). Each later issue appends its stage here.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from raypipe.config import DataConfig, SamplingConfig, SynthConfig, load_config, save_config
from raypipe.train.reward_config import RewardTrainConfig

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo_tiny.yaml"


@dataclasses.dataclass
class DemoConfig:
    synth: SynthConfig = dataclasses.field(default_factory=lambda: SynthConfig(pairs=64))
    data: DataConfig = dataclasses.field(
        default_factory=lambda: DataConfig(sampling=SamplingConfig(fps=4.0, max_frames=16)))
    # The reward stage: the tiny preset (configs/reward_tiny.yaml), shortened so the demo stays quick.
    reward_config: str = "configs/reward_tiny.yaml"
    reward_overrides: list[str] = dataclasses.field(default_factory=lambda: [
        "synth_train.pairs=1024", "synth_val.pairs=128", "train.max_steps=150", "train.eval_every=50",
        "train.checkpoint_every=50"])
    address: str | None = None
    progress: bool = True


def _stage(name: str):
    print(f"\n=== {name} ===", flush=True)
    return time.perf_counter()


def run_demo(cfg: DemoConfig, out: str | Path) -> dict:
    from raypipe.data.manifest import load_manifest
    from raypipe.data.pairs_job import PairsJobConfig, run_pairs
    from raypipe.ray_utils import configure_data_context, init_ray
    from raypipe.video.synth import make_synthpref

    out = Path(out)
    save_config(cfg, out)
    report: dict = {}

    t = _stage(f"1/5 SynthPref: {cfg.synth.pairs} pairs, seed {cfg.synth.seed}")
    synth_dir = out / "synthpref"
    make_synthpref(synth_dir, cfg.synth, progress=cfg.progress)
    report["synth_s"] = round(time.perf_counter() - t, 2)

    t = _stage("2/5 Ray Data pair pipeline")
    manifest = load_manifest(str(synth_dir / "manifest.parquet"), cfg.data.dimensions)
    init_ray(cfg.address)
    configure_data_context(cfg.progress)
    pairs_cfg = PairsJobConfig(data=dataclasses.replace(cfg.data, manifest=manifest.source),
                               out=str(out / "pairs"), address=cfg.address, progress=cfg.progress)
    report["pairs"] = run_pairs(manifest, pairs_cfg)
    report["pairs_s"] = round(time.perf_counter() - t, 2)

    t = _stage("3/5 train VideoReward (Ray Train + DeepSpeed, tiny Qwen2-VL)")
    from raypipe.train.reward_job import run_train_reward

    reward_cfg = load_config(RewardTrainConfig, _repo_path(cfg.reward_config),
                             [*cfg.reward_overrides, f"out={out / 'reward'}", f"progress={str(cfg.progress).lower()}"])
    report["reward"] = run_train_reward(reward_cfg)
    report["reward_s"] = round(time.perf_counter() - t, 2)

    t = _stage("4/5 evaluate VideoReward on its held-out pairs")
    from raypipe.reward.eval_job import EvalConfig, run_eval

    report["eval"] = run_eval(EvalConfig(checkpoint=str(out / "reward" / "final"),
                                         manifest=str(out / "reward" / "data" / "val" / "manifest.parquet"),
                                         out=str(out / "eval"), progress=cfg.progress))
    report["eval_s"] = round(time.perf_counter() - t, 2)

    t = _stage("5/5 relabel the stage-1 pairs with the trained reward model (resumable Ray Data batch scoring)")
    from raypipe.relabel.job import RelabelConfig, run_relabel

    report["relabel"] = run_relabel(RelabelConfig(checkpoint=str(out / "reward" / "final"),
                                                  input=str(synth_dir / "manifest.parquet"),
                                                  out=str(out / "relabel"), progress=cfg.progress))
    report["relabel_agreement"] = _label_agreement(out / "relabel", cfg.data.dimensions)
    report["relabel_s"] = round(time.perf_counter() - t, 2)

    (out / "demo_summary.json").write_text(json.dumps(report, indent=2))
    s = report["pairs"]
    print("\n=== summary ===")
    print(f"pairs: {s['rows']}  decoded: {s['decoded']}  error rows: {s['error_rows']} {s['errors']}")
    print(f"frames decoded: {s['frames_decoded']}  throughput: {s['pairs_per_s']} pairs/s")
    print("labels (A/B/tie/masked):")
    for dim, c in s["labels"].items():
        print(f"  {dim}: {c['A']}/{c['B']}/{c['tie']}/{c['masked']}")
    print("reward model (held-out, ties excluded / included):")
    for dim in cfg.data.dimensions:
        m = report["eval"].get(dim) or {}
        print(f"  {dim}: {m.get('acc_without_ties', float('nan')):.3f} / {m.get('acc_with_ties', float('nan')):.3f}")
    print("relabel: model label = ground-truth label (A/B/same, ε* from validation):")
    for dim, share in report["relabel_agreement"].items():
        print(f"  {dim}: {share:.3f}")
    print(f"outputs in {out}/ (eval/accuracy_vs_epsilon.png, reward/learning_curve.png, relabel/part-*.parquet)")
    return report


def _label_agreement(relabel_out: Path, dimensions) -> dict[str, float]:
    """Per dimension: share of scored rows whose model label equals the manifest's label."""
    import pyarrow.parquet as pq

    from raypipe.data.manifest import normalize_label

    table = pq.read_table(relabel_out)
    names = {1: "A", -1: "B", 0: "same"}
    out = {}
    for dim in dimensions:
        truth = [names.get(normalize_label(v)) for v in table.column(dim).to_pylist()]
        model = table.column(f"model_{dim}").to_pylist()
        pairs = [(t, m) for t, m in zip(truth, model) if t is not None and m is not None]
        out[dim] = round(sum(t == m for t, m in pairs) / max(1, len(pairs)), 4)
    return out


def _repo_path(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() or p.exists() else Path(__file__).resolve().parent.parent / p


def run_demo_from_args(config: str | None, out: str, overrides: list[str]) -> int:
    path = config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    cfg = load_config(DemoConfig, path, overrides)
    run_demo(cfg, out)
    return 0
