"""`raypipe pretrain-generator`: make the tiny generator whose samples the oracle can recognise.

    raypipe pretrain-generator --config configs/generator_tiny.yaml --out gen-out

Stages (each result kept in OUT, the resolved config beside it):
1. SynthPref videos (seeded) -> fixed-shape clips;
2. a tiny random WanPipeline, its VAE fitted to the clips (reconstruction + small KL, one process) and its latent
   statistics set, saved as OUT/vae_fitted;
3. `train-flow train.algo=pretrain` on Ray Train + DeepSpeed from that pipeline: flow matching of the whole
   transformer on cached latents, with prompt dropout for classifier-free guidance -> OUT/flow/final;
4. CFG samples for held-out prompts judged by the oracle -> OUT/report.json (colour / shape / direction right).
Target (issue 5): colour right >= 0.9, direction right >= 0.5 (chance 0.25).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from raypipe.config import ClipConfig, SynthConfig, load_config, save_config, to_dict
from raypipe.data.location import local_output
from raypipe.data.prompts import read_prompts
from raypipe.flow.family import WanFamily
from raypipe.flow.pairs import generator_clip, true_captions
from raypipe.flow.pretrain import fit_vae, oracle_report, set_latent_stats
from raypipe.flow.sampler import sample_videos
from raypipe.flow.wan_build import TinyWanConfig, make_tiny_wan
from raypipe.recipes import train_flow
from raypipe.video.synth import make_synthpref


@dataclasses.dataclass
class GeneratorPretrainConfig:
    synth: SynthConfig = dataclasses.field(default_factory=lambda: SynthConfig(pairs=512, seed=21))
    clip: ClipConfig = dataclasses.field(default_factory=lambda: ClipConfig(frames=9, height=32, width=32))
    tiny: TinyWanConfig = dataclasses.field(default_factory=TinyWanConfig)
    seed: int = 0  # seed of the tiny model, VAE fit and eval prompts
    vae_frame_steps: int = 400  # VAE fit (see fit_vae): single frames first,
    vae_frame_lr: float = 2e-3  # learning rate of the single-frame VAE stage
    vae_steps: int = 200  # then whole clips at a lower rate
    vae_lr: float = 3e-4  # learning rate of the whole-clip VAE stage
    vae_batch: int = 4  # clips per VAE step
    vae_fg_weight: float = 10.0  # up-weight object pixels
    flow_overrides: list[str] = dataclasses.field(default_factory=list)  # key=value for the train-flow stage
    eval_prompts: int = 48  # held-out prompts sampled for the oracle report
    sample_steps: int = 20  # sampling steps of those samples
    cfg_scale: float = 4.0  # classifier-free guidance scale
    out: str = "gen-out"  # output folder
    address: str | None = None  # Ray cluster address; null: RAY_ADDRESS or a new local Ray
    progress: bool = True  # progress bars


def run(cfg: GeneratorPretrainConfig) -> dict:
    local_output(cfg.out, "later stages read the generator and the clips back by local path")
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    report: dict = {"config": str(out / "config.yaml")}
    t0 = time.perf_counter()
    print(f"1/4 SynthPref {cfg.synth.pairs} pairs (seed {cfg.synth.seed}) -> clips {cfg.clip}", flush=True)
    table = make_synthpref(out / "data", cfg.synth, progress=cfg.progress)
    uris = [str(out / "data" / p) for p in table.column("path_A").to_pylist() + table.column("path_B").to_pylist()]
    clips = np.stack([generator_clip(u, cfg.clip) for u in uris])
    report["clips"] = int(len(clips))
    report["vae"] = fitted_vae(cfg, out, table, clips, t0)
    vae = report["vae"]
    print(f"    VAE mse {vae['history'][-1]['mse']:.4f}; oracle on reconstructions {vae['recon_oracle']}", flush=True)

    print("3/4 flow-matching pretraining (train-flow train.algo=pretrain)", flush=True)
    report["flow"] = train_flow.run(flow_config(cfg, out))

    print("4/4 samples judged by the oracle", flush=True)
    gen = WanFamily.load(out / "flow" / "final")
    eval_prompts = read_prompts(cfg.eval_prompts, cfg.seed + 1)
    latent_shape = gen.latent_shape(cfg.clip.frames, cfg.clip.height, cfg.clip.width, check=True)
    videos = sample_videos(gen, eval_prompts, latent_shape, cfg.sample_steps, cfg.cfg_scale, cfg.seed)
    report["samples"] = oracle_report(videos, eval_prompts)
    report["targets"] = {"color_right": ">= 0.9", "direction_right": ">= 0.5 (chance 0.25)"}
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    print(f"samples: {report['samples']}", flush=True)
    return report


VAE_KEYS = (
    "synth",
    "clip",
    "tiny",
    "seed",
    "vae_frame_steps",
    "vae_frame_lr",
    "vae_steps",
    "vae_lr",
    "vae_batch",
    "vae_fg_weight",
)


def fitted_vae(cfg: GeneratorPretrainConfig, out: Path, table, clips: np.ndarray, t0: float) -> dict:
    """Stage 2: a tiny random WanPipeline with its VAE fitted to the clips, saved as OUT/vae_fitted; a fit made
    with the same settings (stamped in vae_report.json) is reused. Returns the fit's report."""
    vae_key = {k: to_dict(cfg)[k] for k in VAE_KEYS}
    stamp = out / "vae_fitted" / "vae_report.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("key") == vae_key:
        print(f"2/4 fitted VAE found in {out / 'vae_fitted'} (same settings): reused", flush=True)
        return json.loads(stamp.read_text())["report"]
    print(f"2/4 fit the tiny VAE ({cfg.vae_frame_steps} frame steps, {cfg.vae_steps} clip steps)", flush=True)
    gen = WanFamily.load(make_tiny_wan(out / "tiny_wan", cfg.tiny, cfg.seed))
    torch.manual_seed(cfg.seed)
    history = fit_vae(
        gen,
        clips,
        steps=cfg.vae_steps,
        batch=cfg.vae_batch,
        lr=cfg.vae_lr,
        frame_steps=cfg.vae_frame_steps,
        frame_lr=cfg.vae_frame_lr,
        seed=cfg.seed,
        fg_weight=cfg.vae_fg_weight,
    )
    set_latent_stats(gen, clips)
    gen.save_pretrained(out / "vae_fitted")
    recon = gen.decode_latents(gen.encode_videos(clips[:64]))
    prompts = (
        (true_captions(table, "A") or table.column("prompt").to_pylist())
        + (true_captions(table, "B") or table.column("prompt").to_pylist())
    )[:64]
    report = {
        "history": history,
        "recon_oracle": oracle_report(recon, prompts),
        "source_oracle": oracle_report(clips[:64], prompts),
        "s": round(time.perf_counter() - t0, 1),
    }
    stamp.write_text(json.dumps({"key": vae_key, "report": report}, default=float))
    return report


# Stage 3's train-flow settings: flow matching of the whole transformer on cached latents, prompt dropout for CFG.
FLOW_PRETRAIN = (
    "train.algo=pretrain train.prompt_dropout=0.1 data.latent_cache=latents train.lr=1e-3 train.epochs=50 "
    "train.batch=16 train.log_every=20 train.checkpoint_every=200"
).split()


def flow_config(cfg: GeneratorPretrainConfig, out: Path):
    c = cfg.clip
    return load_config(
        train_flow.FlowTrainConfig,
        None,
        [
            f"generator={out / 'vae_fitted'}",
            f"data.manifest={out / 'data' / 'manifest.parquet'}",
            f"clip.frames={c.frames}",
            f"clip.height={c.height}",
            f"clip.width={c.width}",
            *FLOW_PRETRAIN,
            f"out={out / 'flow'}",
            f"progress={str(cfg.progress).lower()}",
            f"address={json.dumps(cfg.address)}",
            *cfg.flow_overrides,
        ],
    )
