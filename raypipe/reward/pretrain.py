"""Caption pretraining of the tiny Qwen2-VL backbone: our miniature of the VLM pretraining a real checkpoint has.

    raypipe pretrain-reward-backbone --out assets/tiny-qwen2vl --minutes 10

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

from raypipe.reward.backbone import VISION_END, TinyBackboneConfig, load_backbone, make_tiny_backbone
from raypipe.reward.processor import RewardProcessor

ATTRIBUTE_WORDS = ("color", "shape", "direction")


@dataclasses.dataclass
class CaptionPretrainConfig:
    tiny: TinyBackboneConfig = dataclasses.field(default_factory=TinyBackboneConfig)
    seed: int = 0
    # The view the tiny reward preset trains on: 8 of 16 frames (4 of 8 fps), 56 px upscaled to `pixels`.
    pixels: int = 112
    batch: int = 32
    lr: float = 1.0e-3
    warmup_steps: int = 50
    minutes: float = 10.0
    max_steps: int | None = None  # stop after this many steps even if time is left (tests)
    init: str | None = None  # continue from this backbone folder (an earlier run's output) instead of a random one
    log_every: int = 25


def render_caption_sample(rng: np.random.Generator, pixels: int = 112) -> tuple[np.ndarray, str, tuple[str, str, str]]:
    """(frames [8, pixels, pixels, 3], true caption, (colour, shape, direction)) of a random SynthPref-style clip
    at the reference difficulty, levels vq, mq ~ U[0, 1]."""
    from raypipe.video import synth
    from raypipe.video.decode import resize_frames
    from raypipe.video.sampling import sample_frame_indices

    attrs = (synth.COLORS[rng.integers(len(synth.COLORS))], synth.SHAPES[rng.integers(len(synth.SHAPES))],
             synth.DIRECTIONS[rng.integers(len(synth.DIRECTIONS))])
    video = synth.render_video(*attrs, vq=float(rng.random()), mq=float(rng.random()), rng=rng)
    idx = sample_frame_indices(len(video), 8.0, fps=4.0, min_frames=4, max_frames=16)
    return resize_frames(video[idx], pixels, pixels), synth.make_prompt(*attrs), attrs


def caption_batch(samples, tokenizer) -> dict[str, torch.Tensor]:
    """Qwen2-VL inputs for `<|im_start|> user <|vision_start|> video <|vision_end|> caption <|im_end|>` from
    (frames, caption) pairs — the reward template with no reward tokens (RewardProcessor) — with `labels` on the
    caption and the end token only (-100 elsewhere, the LM loss's ignore index)."""
    processor = RewardProcessor(tokenizer, [], context_agnostic=(), head="last_token")
    batch = processor([frames for frames, _ in samples], [caption for _, caption in samples])
    del batch["reward_positions"]
    ids = batch["input_ids"]
    video_end = (ids == tokenizer.convert_tokens_to_ids(VISION_END)).int().argmax(1, keepdim=True)
    caption = (torch.arange(ids.shape[1]) > video_end) & (batch["attention_mask"] > 0)
    batch["labels"] = torch.where(caption, ids, torch.full_like(ids, -100))
    return batch


def attribute_accuracy(logits: torch.Tensor, batch: dict) -> dict[str, float]:
    """Teacher-forced top-1 accuracy on the caption's colour, shape and direction words ("a C S moving D")."""
    labels = batch["labels"]
    first = (labels != -100).int().argmax(1)  # position of "a"
    rows = torch.arange(len(labels))
    out = {}
    for name, k in zip(ATTRIBUTE_WORDS, (1, 2, 4)):
        pos = first + k
        out[name] = float((logits[rows, pos - 1].argmax(-1) == labels[rows, pos]).float().mean())
    return out


def pretrain_captioner(out: str | Path, cfg: CaptionPretrainConfig | None = None, progress: bool = True) -> dict:
    """Write a caption-pretrained tiny Qwen2-VL to `out` (loadable by `load_backbone`); returns the summary that
    also lands in `out/pretrain_report.json` (steps, final loss, attribute accuracy curve)."""
    from raypipe.config import to_dict

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
            point = {"step": step, "seconds": round(time.time() - start, 1),
                     **{k: round(float(np.mean([w[k] for w in window])), 4) for k in window[0]}}
            curve.append(point)
            window = []
            if progress:
                print(f"caption pretraining step {step} ({point['seconds']:.0f} s): loss {point['loss']:.3f}, "
                      + ", ".join(f"{k} {point[k]:.2f}" for k in ATTRIBUTE_WORDS), flush=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(out / "random_init", ignore_errors=True)
    summary = {"steps": step, "seconds": round(time.time() - start, 1), "curve": curve, "config": to_dict(cfg)}
    if earlier:  # the whole history, so that the asset's report tells how it was made
        summary["earlier"] = [*earlier.get("earlier", []),
                              {k: earlier[k] for k in ("steps", "seconds", "curve", "config")}]
    (out / "pretrain_report.json").write_text(json.dumps(summary, indent=2))
    return summary


def pretrain_backbone_from_args(args) -> int:
    cfg = CaptionPretrainConfig(seed=args.seed, minutes=args.minutes, lr=args.lr, batch=args.batch,
                                pixels=args.pixels, max_steps=args.max_steps, init=args.init)
    summary = pretrain_captioner(args.out, cfg)
    last = summary["curve"][-1] if summary["curve"] else {}
    print(json.dumps({"out": str(args.out), "steps": summary["steps"],
                      **{k: last.get(k) for k in ("loss", *ATTRIBUTE_WORDS)}}))
    return 0
