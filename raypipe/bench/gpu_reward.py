"""`raypipe bench gpu`, part "reward": VideoReward on a Qwen2-VL-2B-shaped backbone (random weights) in a one-rank
ZeRO-2 engine: train-reward's BTT step per pairs per step, gradient checkpointing on/off; then scoring videos/s."""

from __future__ import annotations

import dataclasses
import time

from raypipe.bench.gpu_harness import engine_for, param_counts, reset_peak, shapes, sweep, timed

PROMPT = "a red circle moving left"
# For --reward-conventions videoalign without the user's copy of the official text: a chat template shaped like
# Qwen2-VL's and an instruction of our own words, as long as the official one (~620 words), tokens placed alike.
STANDIN_CHAT = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "you are a rater .<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% for c in message['content'] %}"
    "{% if c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
STANDIN_TEXT = (
    "rate the video quality . " * 50
    + "<|VQ_reward|> . "
    + "rate the motion quality . " * 50
    + "<|MQ_reward|> . "
    + "rate the text alignment . " * 40
    + "the prompt : {text_prompt} . <|TA_reward|> ."
)


def qwen2vl_2b_config(tokenizer):
    """Qwen2-VL-2B-Instruct's architecture (config.json of the release), special-token ids from `tokenizer`."""
    from transformers import Qwen2VLConfig

    from raypipe.reward.backbone import IM_END, IM_START, IMAGE_PAD, PAD, VIDEO_PAD, VISION_END, VISION_START

    ids = {
        t: tokenizer.convert_tokens_to_ids(t)
        for t in (IM_START, IM_END, PAD, IMAGE_PAD, VIDEO_PAD, VISION_START, VISION_END)
    }
    return Qwen2VLConfig(
        text_config=dict(
            vocab_size=151936,
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            bos_token_id=ids[IM_START],
            eos_token_id=ids[IM_END],
            pad_token_id=ids[PAD],
        ),
        vision_config=dict(
            depth=32,
            embed_dim=1280,
            hidden_size=1536,
            num_heads=16,
            mlp_ratio=4,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_chans=3,
        ),
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
        bos_token_id=ids[IM_START],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[PAD],
        tie_word_embeddings=True,
    )


def reward_conventions(args) -> tuple[dict, str | None]:
    """RewardModelConfig fields and the template file for `--reward-conventions` (a stand-in text if none)."""
    import os
    import tempfile

    from raypipe.reward.videoalign import TEMPLATE_ENV

    if getattr(args, "reward_conventions", "raypipe") != "videoalign":
        return {}, None
    path = getattr(args, "template_file", None) or os.environ.get(TEMPLATE_ENV)
    if not path:
        path = os.path.join(tempfile.mkdtemp(), "standin_template.txt")
        with open(path, "w") as f:
            f.write(STANDIN_TEXT)
    return {"template": "videoalign", "positions": "1d"}, path


def random_reward(size: str, device, dtype: str, conventions: dict | None = None, template_file: str | None = None):
    """A VideoReward (trainable parts configured as in training) on a random backbone built on `device`."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from raypipe.reward.backbone import build_tiny_tokenizer
    from raypipe.reward.model import RewardModelConfig, VideoReward, make_processor

    cfg = RewardModelConfig(
        dtype=dtype,
        instruction="Please evaluate the video for visual quality, motion quality and alignment with the prompt:",
        **(conventions or {}),
    )
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = STANDIN_CHAT
    if size != "real":
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            from raypipe.reward.backbone import make_tiny_backbone

            backbone_dir = make_tiny_backbone(d)
            tokenizer.save_pretrained(backbone_dir)  # the tiny backbone with a chat template
            return VideoReward.build(
                dataclasses.replace(cfg, name_or_path=str(backbone_dir)), template_file=template_file
            ).to(device)
    with torch.device(device):  # 2.2B random weights drawn on the GPU: seconds, not a minute on the CPU
        backbone = Qwen2VLForConditionalGeneration._from_config(
            qwen2vl_2b_config(tokenizer), dtype=getattr(torch, dtype)
        )
    model = VideoReward(backbone, make_processor(tokenizer, cfg, template_file), cfg)
    model.configure_trainable()
    return model.to(device)


def bench_reward(args, size: str, device, dtype: str) -> dict:
    import numpy as np

    from raypipe.recipes.train_reward import TrainSettings

    sh = shapes(size)
    t0 = time.perf_counter()
    conventions, template_file = reward_conventions(args)
    model = random_reward(size, device, dtype, conventions, template_file)
    build_s = time.perf_counter() - t0
    n_total, n_train = param_counts(model)
    settings = TrainSettings(zero_stage=2, lr=2e-6, warmup_ratio=0.05, batch=4)
    engine = engine_for(model, settings, bf16=dtype == "bfloat16", micro_batch=4)
    rng = np.random.default_rng(0)
    frames_shape = (*sh["reward_frames"], 3)
    tokens = int(model.processor([np.zeros(frames_shape, np.uint8)], [PROMPT])["input_ids"].shape[1])
    train_rows = _train_sweep(args, model, engine, rng, frames_shape, device)
    scoring = _scoring(args, model, engine, rng, frames_shape, sh["score_batch"], device)
    used = {"template": model.cfg.template, "positions": model.cfg.positions, "template_file": template_file}
    engine = model = None  # free before the next part
    reset_peak(device)
    return {
        "model": "VideoReward on Qwen2-VL-2B shapes" if size == "real" else "VideoReward (tiny)",
        "conventions": used,
        "params": n_total,
        "trainable_params": n_train,
        "build_s": round(build_s, 1),
        "video": {
            "frames": frames_shape[0],
            "height": frames_shape[1],
            "width": frames_shape[2],
            "tokens_per_sequence": tokens,
        },
        "zero_stage": 2,
        "train": train_rows,
        "scoring": scoring,
    }


def _batch(model, rng, frames_shape, pairs: int, device):
    """`pairs` random pairs (2 x pairs videos, A videos first), random labels in {-1, 0, 1}, nothing masked."""
    import numpy as np
    import torch

    videos = [rng.integers(0, 256, frames_shape, dtype=np.uint8) for _ in range(2 * pairs)]
    inputs = model.processor(videos, [PROMPT] * (2 * pairs))
    y = torch.tensor(rng.integers(-1, 2, (pairs, 3)), dtype=torch.long, device=device)
    return {k: v.to(device) for k, v in inputs.items()}, y, torch.ones_like(y, dtype=torch.bool)


def _train_sweep(args, model, engine, rng, frames_shape, device) -> list[dict]:
    """train-reward's step (BTT) per setting: gradient checkpointing on, then off, each over --reward-batches."""
    from raypipe.reward.losses import reward_loss

    def run_one(s: dict) -> dict:
        if s["gradient_checkpointing"]:
            model.enable_gradient_checkpointing()
        else:
            model.disable_gradient_checkpointing()
        engine.train()
        inputs, y, mask = _batch(model, rng, frames_shape, s["pairs"], device)

        def step():
            r = engine(inputs)
            loss, _ = reward_loss("btt", r[: s["pairs"]], r[s["pairs"] :], y, mask, 5.0)
            engine.backward(loss)
            engine.step()

        out = timed(step, device, args.steps, args.warmup)
        out["pairs_per_s"] = round(s["pairs"] / out["s_per_step"], 3)
        return out

    batches = [int(b) for b in args.reward_batches.split(",")]
    settings_list = [
        {"group": gc_on, "gradient_checkpointing": gc_on, "pairs": b} for gc_on in (True, False) for b in batches
    ]
    rows = sweep(settings_list, run_one, device)
    model.disable_gradient_checkpointing()
    return rows


def _scoring(args, model, engine, rng, frames_shape, batch: int, device) -> dict:
    """Scoring (eval, no gradients): videos/s of forward passes of `batch` videos."""
    import numpy as np
    import torch

    engine.eval()
    videos = [rng.integers(0, 256, frames_shape, dtype=np.uint8) for _ in range(batch)]
    score_inputs = {k: v.to(device) for k, v in model.processor(videos, [PROMPT] * len(videos)).items()}

    def score():
        with torch.no_grad():
            engine(score_inputs)

    scoring = timed(score, device, args.steps, args.warmup)
    scoring["videos_per_s"] = round(batch / scoring["s_per_step"], 2)
    scoring["batch"] = batch
    return scoring
