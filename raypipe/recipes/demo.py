"""`raypipe demo` / `make demo`: the whole story on a local Ray with the tiny models.

Stages: SynthPref -> Ray Data pair pipeline -> train VideoReward (Ray Train + DeepSpeed) -> evaluate it (accuracy
table, accuracy-vs-epsilon plot) -> relabel the pairs with it (model labels with ties) -> pairs from the tiny
pretrained generator's own samples, judged by that reward model -> Flow-DPO with LoRA on them, win rates over the
base by the reward model and the oracle -> Flow-NRG: a latent reward model, then guided vs unguided samples ->
LiFT: a tiny critic rates the generator's samples, which then fine-tune it weighted by those ratings
(`raypipe.recipes.demo_lift`).
The generator is the small asset in assets/tiny-generator (see its PROVENANCE.md); `from_scratch=true` remakes it
with `raypipe pretrain-generator --config configs/generator_tiny.yaml` first (~25 min on 2 CPUs).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from raypipe.config import DataConfig, SamplingConfig, SynthConfig, load_config, repo_path, save_config
from raypipe.data.location import local_output
from raypipe.data.manifest import label_name, load_manifest, normalize_label
from raypipe.demo_report import print_summary, write_report
from raypipe.distributed.cluster import configure_data_context, init_ray
from raypipe.flow.evaluation import attribute_share, win_rate
from raypipe.recipes import (
    eval_flow,
    eval_reward,
    generate,
    pairs,
    pretrain_generator,
    relabel,
    sample_pairs,
    train_flow,
    train_latent_reward,
    train_reward,
)
from raypipe.recipes.demo_lift import lift_stage
from raypipe.video.oracle import judge_video
from raypipe.video.synth import make_synthpref

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_tiny.yaml"


@dataclasses.dataclass
class DemoConfig:
    synth: SynthConfig = dataclasses.field(default_factory=lambda: SynthConfig(pairs=64))
    data: DataConfig = dataclasses.field(
        default_factory=lambda: DataConfig(sampling=SamplingConfig(fps=4.0, max_frames=16))
    )
    # label columns the pair and reward stages read (the generator stages report VQ, MQ, TA)
    dims: list[str] = dataclasses.field(default_factory=lambda: ["VQ", "MQ", "TA"])
    # The reward stage: the tiny preset (configs/reward_tiny.yaml), shortened so the demo stays quick.
    reward_config: str = "configs/reward_tiny.yaml"
    reward_overrides: list[str] = dataclasses.field(
        default_factory=lambda: [
            "synth_train.pairs=1024",
            "synth_val.pairs=128",
            "train.max_steps=150",
            "train.eval_every=50",
            "train.checkpoint_every=50",
            "data.sampling.min_pixels=3136",
            "train.lr=1e-3",
            "train.dim_weights={}",
        ]
    )  # why: configs/demo_tiny.yaml
    generator: str = "assets/tiny-generator"  # a pretrained tiny WanPipeline (repo asset)
    from_scratch: bool = False  # remake the generator with pretrain-generator first (slow)
    generator_config: str = "configs/generator_tiny.yaml"  # pretrain-generator preset used with from_scratch
    sample_prompts: int = 48  # stage 6: prompts x k samples judged by the reward model
    sample_k: int = 2  # samples per prompt in stage 6
    # weights of the stage-6 pairs, e.g. {VQ: 1}
    pair_weights: dict[str, float] = dataclasses.field(default_factory=lambda: {"VQ": 1.0})
    dpo_steps: int = 40  # train-flow steps of Flow-DPO and of each baseline
    dpo_overrides: list[str] = dataclasses.field(default_factory=list)  # extra train-flow key=value (all algos)
    baselines: list[str] = dataclasses.field(default_factory=lambda: ["sft", "rwr"])  # beside Flow-DPO
    eval_prompts: int = 32  # held-out prompts for the win rates (±0.09 at 32)
    latent_reward_steps: int = 60  # train-latent-reward steps in stage 8
    latent_reward_overrides: list[str] = dataclasses.field(default_factory=list)  # extra train-latent-reward key=value
    guided_prompts: int = 4  # prompts per Flow-NRG run
    # Flow-NRG runs beside the unguided one: weight settings (the same prompts and noise for every run)
    guidance: list[dict[str, float]] = dataclasses.field(default_factory=lambda: [{"VQ": 1.0}, {"MQ": 0.5, "TA": 0.5}])
    guidance_strength: float = 2.0  # Flow-NRG strength λ
    lift: bool = True  # stage 9: LiFT (critic -> critic relabel of the stage-6 samples -> LiFT fine-tuning)
    critic: str = ""  # stage 9: a LiFT critic checkpoint to use; empty: train a tiny one (configs/critic_tiny.yaml)
    critic_minutes: float = 3.0  # stage 9: the critic's training budget
    critic_overrides: list[str] = dataclasses.field(
        default_factory=lambda: ["synth_train.pairs=256", "synth_val.pairs=32", "train.eval_every=50"]
    )  # extra train-critic key=value
    lift_steps: int = 40  # stage 9: LiFT fine-tuning steps
    lift_real: int = 32  # stage 9: clean SynthPref renders mixed in as the real videos
    out: str = "demo-out"  # output folder
    address: str | None = None  # Ray cluster address; null: RAY_ADDRESS or a new local Ray
    progress: bool = True  # progress bars


STAGES = 9


def _stage(name: str):
    print(f"\n=== {name} ===", flush=True)
    return time.perf_counter()


def run(cfg: DemoConfig) -> dict:
    local_output(cfg.out, "every stage reads the previous one's outputs back by local path")
    out = Path(cfg.out)
    save_config(cfg, out)
    t_start = time.perf_counter()
    synth_dir = out / "synthpref"
    report = _reward_stages(cfg, out, synth_dir)
    report.update(_generator_stages(cfg, out, synth_dir))
    print_summary(report, cfg)
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    report["pair_weights"] = dict(cfg.pair_weights)
    (out / "demo_summary.json").write_text(json.dumps(report, indent=2))
    md = write_report(out, report)
    print(
        f"\nreport: {md}  (tables, learning curve, ε-accuracy plot, reward histograms, sample GIFs); "
        f"total {report['total_s']:.0f} s"
    )
    return report


def _reward_stages(cfg: DemoConfig, out: Path, synth_dir: Path) -> dict:
    """Stages 1-5: SynthPref, the pair pipeline, VideoReward trained, evaluated, and relabelling with it."""
    report: dict = {}
    t = _stage(f"1/{STAGES} SynthPref: {cfg.synth.pairs} pairs, seed {cfg.synth.seed}")
    make_synthpref(synth_dir, cfg.synth, progress=cfg.progress)
    report["synth_s"] = round(time.perf_counter() - t, 2)

    t = _stage(f"2/{STAGES} Ray Data pair pipeline")
    manifest = load_manifest(str(synth_dir / "manifest.parquet"), cfg.dims)
    init_ray(cfg.address)
    configure_data_context(cfg.progress)
    pairs_cfg = pairs.PairsJobConfig(
        data=dataclasses.replace(cfg.data, manifest=manifest.source),
        dims=cfg.dims,
        out=str(out / "pairs"),
        address=cfg.address,
        progress=cfg.progress,
    )
    report["pairs"] = pairs.run_pairs(manifest, pairs_cfg)
    report["pairs_s"] = round(time.perf_counter() - t, 2)

    t = _stage(f"3/{STAGES} train VideoReward (Ray Train + DeepSpeed, tiny Qwen2-VL)")
    reward_cfg = load_config(
        train_reward.RewardTrainConfig,
        repo_path(cfg.reward_config),
        [*cfg.reward_overrides, f"out={out / 'reward'}", f"progress={str(cfg.progress).lower()}"],
    )
    report["reward"] = train_reward.run(reward_cfg)
    report["reward_s"] = round(time.perf_counter() - t, 2)

    t = _stage(f"4/{STAGES} evaluate VideoReward on its held-out pairs")
    report["eval"] = eval_reward.run(
        eval_reward.EvalConfig(
            reward=str(out / "reward" / "final"),
            manifest=str(out / "reward" / "data" / "val" / "manifest.parquet"),
            out=str(out / "eval"),
            progress=cfg.progress,
        )
    )
    report["eval_s"] = round(time.perf_counter() - t, 2)

    t = _stage(f"5/{STAGES} relabel the stage-1 pairs with the trained reward model (resumable Ray Data batch scoring)")
    report["relabel"] = relabel.run(
        relabel.RelabelConfig(
            reward=str(out / "reward" / "final"),
            input=str(synth_dir / "manifest.parquet"),
            out=str(out / "relabel"),
            progress=cfg.progress,
        )
    )
    report["relabel_agreement"] = _label_agreement(out / "relabel", cfg.dims)
    report["relabel_s"] = round(time.perf_counter() - t, 2)
    return report


def _generator_stages(cfg: DemoConfig, out: Path, synth_dir: Path) -> dict:
    """Stages 6-9 from the tiny pretrained generator: pairs from its samples, Flow-DPO + baselines, Flow-NRG, LiFT."""
    report: dict = {}
    reward = str(out / "reward" / "final")
    generator = _pretrained_generator(cfg, out, report)
    report.update(_sample_pairs_stage(cfg, out, generator, reward))
    report.update(_flow_stage(cfg, out, generator, reward))
    report.update(_nrg_stage(cfg, out, synth_dir, generator))
    if cfg.lift:
        report.update(lift_stage(cfg, out, generator, reward, f"9/{STAGES}"))
    return report


def _pretrained_generator(cfg: DemoConfig, out: Path, report: dict) -> str:
    """The repo's tiny generator, or (from_scratch) one made now with pretrain-generator."""
    generator = str(repo_path(cfg.generator))
    if cfg.from_scratch:
        t = _stage("6a/8 pretrain the tiny generator from scratch (pretrain-generator)")
        pretrain_generator.run(
            load_config(
                pretrain_generator.GeneratorPretrainConfig,
                repo_path(cfg.generator_config),
                [f"out={out / 'generator'}", f"progress={str(cfg.progress).lower()}"],
            )
        )
        generator = str(out / "generator" / "flow" / "final")
        report["generator_s"] = round(time.perf_counter() - t, 2)
    if not (Path(generator) / "model_index.json").exists():
        raise FileNotFoundError(f"no pretrained generator at {generator}: run with from_scratch=true")
    return generator


def _sample_pairs_stage(cfg: DemoConfig, out: Path, generator: str, reward: str) -> dict:
    report: dict = {}
    t = _stage(
        f"6/{STAGES} pairs from the generator's own samples ({cfg.sample_prompts} prompts x {cfg.sample_k}), "
        f"judged by the stage-3 reward model"
    )
    report["sample_pairs"] = sample_pairs.run(
        sample_pairs.SamplePairsConfig(
            generator=generator,
            reward=reward,
            prompts=str(cfg.sample_prompts),
            k=cfg.sample_k,
            weights=dict(cfg.pair_weights),
            out=str(out / "sample_pairs"),
            address=cfg.address,
            progress=cfg.progress,
        )
    )
    report["sample_pairs_s"] = round(time.perf_counter() - t, 2)
    return report


def _flow_stage(cfg: DemoConfig, out: Path, generator: str, reward: str) -> dict:
    report: dict = {}
    algos = ["dpo", *[a for a in cfg.baselines if a != "dpo"]]
    t = _stage(
        f"7/{STAGES} Flow-DPO and baselines ({', '.join(algos[1:]) or 'none'}): LoRA, Ray Train + DeepSpeed, "
        f"{cfg.dpo_steps} steps each on those pairs, then win rates over the base"
    )
    report["flow"] = {}
    for algo in algos:
        print(f"--- {algo} ---", flush=True)
        flow_cfg = load_config(
            train_flow.FlowTrainConfig,
            repo_path("configs/flow_tiny.yaml"),
            [
                f"generator={generator}",
                f"data.manifest={out / 'sample_pairs' / 'pairs'}",
                "data.source=margins",
                f"data.weights={json.dumps(dict(cfg.pair_weights))}",
                "clip.frames=9",
                "clip.height=32",
                "clip.width=32",
                f"train.algo={algo}",
                f"train.max_steps={cfg.dpo_steps}",
                "train.epochs=100",
                f"out={out / 'flow' / algo}",
                f"progress={str(cfg.progress).lower()}",
                *cfg.dpo_overrides,
            ],
        )
        trained = train_flow.run(flow_cfg)
        evaluated = eval_flow.run(
            eval_flow.FlowEvalConfig(
                generator=generator,
                lora=str(out / "flow" / algo / "final"),
                reward=reward,
                prompts=str(cfg.eval_prompts),
                out=str(out / "flow" / algo / "eval"),
            )
        )
        report["flow"][algo] = {"train": trained, "eval": evaluated}
    report["flow_s"] = round(time.perf_counter() - t, 2)
    return report


def _nrg_stage(cfg: DemoConfig, out: Path, synth_dir: Path, generator: str) -> dict:
    report: dict = {}
    t = _stage(
        f"8/{STAGES} Flow-NRG: latent reward model (first blocks of the generator) on the stage-1 pairs, "
        f"then reward-guided sampling"
    )
    lr_cfg = load_config(
        train_latent_reward.LatentRewardConfig,
        repo_path("configs/latent_reward_tiny.yaml"),
        [
            f"generator={generator}",
            f"data.manifest={synth_dir / 'manifest.parquet'}",
            "train.epochs=100",
            f"train.max_steps={cfg.latent_reward_steps}",
            "train.batch=8",
            "train.checkpoint_every=30",
            "eval_draws=2",
            f"out={out / 'latent_reward'}",
            f"progress={str(cfg.progress).lower()}",
            *cfg.latent_reward_overrides,
        ],
    )
    lr = train_latent_reward.run(lr_cfg)
    settings = [("unguided", {}, 0.0)] + [
        ("guided " + ",".join(f"{d}={v:g}" for d, v in w.items()), w, cfg.guidance_strength) for w in cfg.guidance
    ]
    runs = {}
    for i, (name, weights, strength) in enumerate(settings):
        folder = "unguided" if i == 0 else f"guided_{i}"
        summary = generate.run(
            generate.GenerateConfig(
                generator=generator,
                latent_reward=str(out / "latent_reward" / "final"),
                prompts=str(cfg.guided_prompts),
                weights=weights,
                strength=strength,
                out=str(out / "nrg" / folder),
            )
        )
        runs[folder] = {"name": name, "weights": weights, "samples": summary["samples"]}
    report["nrg"] = _nrg_summary(runs, lr, cfg)
    report["nrg_s"] = round(time.perf_counter() - t, 2)
    return report


def _nrg_summary(runs: dict, latent_reward: dict, cfg: DemoConfig) -> dict:
    """Per Flow-NRG run: mean latent reward per dimension, the oracle's verdicts, win rates over unguided."""
    dims = ("VQ", "MQ", "TA")
    oracle = {k: [judge_video(s["file"], s["prompt"]) for s in r["samples"]] for k, r in runs.items()}
    by_t = latent_reward.get("val_accuracy_by_t") or {}
    summary = {
        "strength": cfg.guidance_strength,
        "prompts": cfg.guided_prompts,
        "runs": {},
        "accuracy_by_t": {d: v for d, v in by_t.items() if isinstance(v, dict)},
        "val_pairs": by_t.get("n_pairs"),
    }
    buckets = next(iter(summary["accuracy_by_t"].values()), {})
    summary["buckets"] = list(buckets)
    for k, r in runs.items():
        entry = {
            "name": r["name"],
            "weights": r["weights"],
            "mean_latent": {d: float(np.mean([s["latent_rewards"][d] for s in r["samples"]])) for d in dims},
            "oracle": attribute_share(oracle[k], [s["prompt"] for s in r["samples"]]),
        }
        if k != "unguided":
            entry["oracle_win_rate"] = {
                d: win_rate(
                    np.array([v.get(d, np.nan) for v in oracle[k]], float),
                    np.array([v.get(d, np.nan) for v in oracle["unguided"]], float),
                )
                for d in dims
            }
        summary["runs"][k] = entry
    return summary


def _label_agreement(relabel_out: Path, dimensions) -> dict[str, float]:
    """Per dimension: share of scored rows whose model label equals the manifest's label."""
    table = pq.read_table(relabel_out)
    out = {}
    for dim in dimensions:
        truth = [label_name(normalize_label(v)) for v in table.column(dim).to_pylist()]
        model = table.column(f"model_{dim}").to_pylist()
        pairs = [(t, m) for t, m in zip(truth, model) if t is not None and m is not None]
        out[dim] = round(sum(t == m for t, m in pairs) / max(1, len(pairs)), 4)
    return out
