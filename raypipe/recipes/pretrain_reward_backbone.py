"""`raypipe pretrain-reward-backbone`: caption pretraining of the tiny Qwen2-VL backbone, our miniature of the VLM
pretraining a real checkpoint has.

    raypipe pretrain-reward-backbone --out assets/tiny-qwen2vl minutes=10

VideoReward starts from a pretrained VLM (Qwen2-VL-2B-Instruct); text alignment rests on what that model already
knows about words and pictures. A RANDOM tiny backbone knows nothing: trained on TA preferences alone it stays at
chance for 16k pairs (README, issue 3). So the tiny stand-in gets a short pretraining of its own, like
assets/tiny-generator: next-token captioning of freshly rendered SynthPref-style clips with their TRUE attributes
("a red circle moving left"), random VQ/MQ degradations, no preference labels and no clip of the benchmark's
train/validation seeds. Plain single-process PyTorch (a few CPU minutes; no Ray needed). The output folder loads
like any Qwen2-VL checkpoint (`model.name_or_path`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from raypipe.config import to_dict
from raypipe.reward.backbone import TinyBackboneConfig, load_backbone, make_tiny_backbone
from raypipe.reward.captioning import ATTRIBUTE_WORDS, attribute_accuracy, caption_batch, render_caption_sample


@dataclasses.dataclass
class CaptionPretrainConfig:
    tiny: TinyBackboneConfig = dataclasses.field(default_factory=TinyBackboneConfig)
    seed: int = 0  # seed of the random init and the clip stream
    # The view the tiny reward preset trains on: 8 of 16 frames (4 of 8 fps), 56 px upscaled to `pixels`.
    pixels: int = 112
    batch: int = 32  # clips per step
    lr: float = 1.0e-3  # peak learning rate (AdamW)
    warmup_steps: int = 50  # linear warm-up steps
    minutes: float = 10.0  # wall-clock budget
    max_steps: int | None = None  # stop after this many steps even if time is left (tests)
    init: str | None = None  # continue from this backbone folder (an earlier run's output) instead of a random one
    log_every: int = 25  # steps between curve points
    out: str = "tiny-qwen2vl"  # output folder: a Qwen2-VL checkpoint + pretrain_report.json
    progress: bool = True  # progress bars


def pretrain_captioner(out: str | Path, cfg: CaptionPretrainConfig | None = None, progress: bool = True) -> dict:
    """Write a caption-pretrained tiny Qwen2-VL to `out` (loadable by `load_backbone`); returns the summary that
    also lands in `out/pretrain_report.json` (steps, final loss, attribute accuracy curve)."""
    cfg = cfg or CaptionPretrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_backbone(cfg.init or make_tiny_backbone(out / "random_init", cfg.tiny, cfg.seed))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    # Seeds other than the benchmark's (train 1, validation 2): pretraining never sees an evaluation clip.
    # A continued run (init) draws fresh clips: the step count from the earlier report enters the seed.
    earlier = json.loads((Path(cfg.init) / "pretrain_report.json").read_text()) if cfg.init else {}
    rng = np.random.default_rng([cfg.seed, 977, *([earlier["steps"]] if earlier else [])])
    curve, window, step, start = [], [], 0, time.time()
    while time.time() - start < cfg.minutes * 60 and (cfg.max_steps is None or step < cfg.max_steps):
        samples = [render_caption_sample(rng, cfg.pixels)[:2] for _ in range(cfg.batch)]
        batch = caption_batch(samples, tokenizer)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
        result = model(**batch, use_cache=False)
        result.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        window.append({"loss": float(result.loss.detach()), **attribute_accuracy(result.logits.detach(), batch)})
        if step % cfg.log_every == 0:
            point = {
                "step": step,
                "seconds": round(time.time() - start, 1),
                **{k: round(float(np.mean([w[k] for w in window])), 4) for k in window[0]},
            }
            curve.append(point)
            window = []
            if progress:
                print(
                    f"caption pretraining step {step} ({point['seconds']:.0f} s): loss {point['loss']:.3f}, "
                    + ", ".join(f"{k} {point[k]:.2f}" for k in ATTRIBUTE_WORDS),
                    flush=True,
                )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(out / "random_init", ignore_errors=True)
    summary = {"steps": step, "seconds": round(time.time() - start, 1), "curve": curve, "config": to_dict(cfg)}
    if earlier:  # the whole history, so that the asset's report tells how it was made
        summary["earlier"] = [
            *earlier.get("earlier", []),
            {k: earlier[k] for k in ("steps", "seconds", "curve", "config")},
        ]
    (out / "pretrain_report.json").write_text(json.dumps(summary, indent=2))
    return summary


def run(cfg: CaptionPretrainConfig) -> dict:
    summary = pretrain_captioner(cfg.out, cfg, progress=cfg.progress)
    last = summary["curve"][-1] if summary["curve"] else {}
    print(
        json.dumps(
            {"out": str(cfg.out), "steps": summary["steps"], **{k: last.get(k) for k in ("loss", *ATTRIBUTE_WORDS)}}
        )
    )
    return summary
