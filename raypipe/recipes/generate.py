"""`raypipe generate`: reward-guided sampling (Flow-NRG) from a generator, with per-dimension weights.

    raypipe generate --out gen-samples generator=gen-out/flow/final latent_reward=lr-out/final prompts=8 \\
        "weights={VQ: 0.1, MQ: 0.1, TA: 0.8}" strength=2 seed=0

Writes OUT/videos/NNNN.mp4 and OUT/samples.json (per sample: prompt, seed, file, the latent reward model's rewards
of the final clean latents per dimension, and their weighted sum). With strength=0 or all-zero weights the
samples are bit-for-bit the unguided ones for the same seed. `image=PATH` (image-to-video generators) starts every
sample on that picture. The sampler is `raypipe.nrg.sampling.guided_samples`, the one the NRG benchmark,
sample-pairs and the Serve /generate endpoint call.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from raypipe.config import ClipConfig, ConfigError, save_config
from raypipe.data.location import StagedOutput
from raypipe.data.prompts import read_prompts
from raypipe.data.weights import scalarize, weight_vector
from raypipe.nrg.model import LatentReward
from raypipe.nrg.sampling import guided_samples, load_generator
from raypipe.video.decode import VideoError, read_image
from raypipe.video.encode import write_mp4


@dataclasses.dataclass
class GenerateConfig:
    generator: str = ""  # a WanPipeline folder (e.g. gen-out/flow/final)
    lora: str | None = None  # optional adapters from train-flow (OUT/final)
    latent_reward: str | None = None  # a train-latent-reward model (OUT/final); needed when guiding
    prompts: str = "8"  # a number (seeded SynthPref prompts), a .txt / manifest, or prompts separated by "|"
    image: str | None = None  # image-to-video (Wan I2V / TI2V, LTX-Video): the first frame of every sample (a picture
    # or a video's first frame), resized to the clip
    weights: dict[str, float] = dataclasses.field(default_factory=dict)  # e.g. {VQ: 0.1, TA: 0.8}; missing: 0
    strength: float = 0.0  # λ
    seed: int = 0  # noise seed: the same seed gives the same initial noise, guided or not
    steps: int = 20  # sampling steps (Euler)
    cfg_scale: float = 4.0  # classifier-free guidance scale
    clip: ClipConfig = dataclasses.field(default_factory=lambda: ClipConfig(frames=9, height=32, width=32))
    fps: float = 8.0  # frame rate of the written mp4s
    batch: int = 16  # videos per sampling batch
    device: str = "auto"  # auto (cuda when there is one) | cuda | cpu
    dtype: str = "float32"  # bfloat16 on GPUs
    out: str = "generate-out"  # output folder, or an object-store prefix (s3://bucket/samples)


def run(cfg: GenerateConfig) -> dict:
    gen = load_generator(cfg.generator, cfg.lora, cfg.device, cfg.dtype)
    model = (
        LatentReward.from_pretrained(cfg.latent_reward, cfg.dtype, str(gen.device), generator=gen)
        if cfg.latent_reward
        else None
    )
    if model is None and (cfg.strength or cfg.weights):
        raise ConfigError(
            "guidance (strength, weights) needs latent_reward=PATH (train one with `raypipe train-latent-reward`)"
        )
    try:
        weights = weight_vector(cfg.weights, model.dims) if model is not None else {}
    except ValueError as err:
        raise ConfigError(str(err)) from None
    prompts = read_prompts(cfg.prompts, cfg.seed)
    shape = gen.latent_shape(cfg.clip.frames, cfg.clip.height, cfg.clip.width, check=True)
    images = None
    if cfg.image:
        if not getattr(gen, "takes_image", False):
            raise ConfigError(
                f"image= needs an image-to-video generator (Wan I2V / TI2V, LTX-Video), not {cfg.generator}"
            )
        image = read_image(cfg.image, cfg.clip.height, cfg.clip.width)
        if isinstance(image, VideoError):
            raise ConfigError(f"image={cfg.image}: {image.message}")
        images = np.repeat(image[None], len(prompts), axis=0)
    stage = StagedOutput(cfg.out)  # a local folder, or staged locally and published to an object store
    out = stage.dir
    (out / "videos").mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    result = guided_samples(
        gen, model, prompts, weights, cfg.strength, cfg.seed, cfg.steps, cfg.cfg_scale, shape, cfg.batch, images=images
    )
    rows = []
    for i, (prompt, video) in enumerate(zip(prompts, result["videos"])):
        path = out / "videos" / f"{i:04d}.mp4"
        write_mp4(video, path, cfg.fps)
        row = {
            "index": i,
            "prompt": prompt,
            "seed": cfg.seed,
            "noise_index": i,
            "file": stage.uri_of(f"videos/{i:04d}.mp4"),
        }
        if result["latent_rewards"] is not None:
            r = result["latent_rewards"][i]
            row["latent_rewards"] = {d: float(v) for d, v in zip(model.dims, r)}
            row["weighted_reward"] = float(scalarize(dict(zip(model.dims, r.tolist())), weights))
        rows.append(row)
    summary = {
        "samples": rows,
        "weights": weights,
        "strength": cfg.strength,
        "steps": cfg.steps,
        "cfg_scale": cfg.cfg_scale,
        "sample_s": round(result["sample_s"], 2),
    }
    (out / "samples.json").write_text(json.dumps(summary, indent=2))
    stage.publish()
    print(
        f"generate: {len(rows)} videos in {stage.uri_of('videos')} ({summary['sample_s']} s sampling); "
        f"rewards in {stage.uri_of('samples.json')}",
        flush=True,
    )
    if rows and "weighted_reward" in rows[0]:
        print(f"  mean weighted latent reward {np.mean([r['weighted_reward'] for r in rows]):.4f}", flush=True)
    return summary
