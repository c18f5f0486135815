"""What every part of `raypipe bench gpu` shares: the shapes per size, the one-rank process group and DeepSpeed
engines, the timing harness (`timed`) and the out-of-memory-aware sweep over settings. No Ray."""

from __future__ import annotations

import gc
import json
import os
import socket
import time


# --- shapes ------------------------------------------------------------------------------------------------------
def shapes(size: str) -> dict:
    if size == "real":
        return {
            "reward_frames": (8, 448, 448),
            "score_batch": 16,
            "clip": (33, 480, 832),
            "text_len": 226,
            "k_blocks": 8,
        }
    return {"reward_frames": (4, 56, 56), "score_batch": 4, "clip": (9, 32, 32), "text_len": 16, "k_blocks": 1}


# --family: the generator at its real shapes (random weights) and the tiny config of the same classes (the
# family's Tiny*Config classmethods); the clip the real one is trained on (frames, height, width)
FAMILIES = {
    "wan21-1.3b": ("wan", "wan21_1_3b", None, (33, 480, 832), "Wan2.1-T2V-1.3B"),
    "wan22-ti2v-5b": ("wan", "wan22_ti2v_5b", "wan22_ti2v_tiny", (33, 704, 1280), "Wan2.2-TI2V-5B"),
    "wan22-a14b": ("wan", "wan22_a14b", "wan22_a14b_tiny", (33, 480, 832), "Wan2.2-T2V-A14B (two experts)"),
    "wan21-i2v-14b": ("wan", "wan21_i2v_14b", "wan21_i2v_tiny", (33, 480, 832), "Wan2.1-I2V-14B-480P"),
    "wan22-i2v-a14b": ("wan", "wan22_i2v_a14b", "wan22_i2v_a14b_tiny", (33, 480, 832), "Wan2.2-I2V-A14B"),
    "hunyuan-video": ("hunyuan", "hunyuan_video", None, (33, 544, 960), "HunyuanVideo 1.0 (13B)"),
    "hunyuan-video-15": ("hunyuan15", "hunyuan_video_15", None, (33, 480, 848), "HunyuanVideo 1.5 T2V (8.3B)"),
    "ltx-video": ("ltx", "ltx_video", None, (33, 480, 704), "LTX-Video 0.9 (2B)"),
    "ltx-2": ("ltx2", "ltx2", None, (33, 512, 768), "LTX-2 (19B, its video stream)"),
}


def random_family(size: str, device, dtype: str, family: str = "wan21-1.3b"):
    """The generator of `family` with random weights: its real shapes, or its tiny config of the same classes."""
    kind, real, tiny, _, _ = FAMILIES[family]
    if kind == "ltx":
        from raypipe.flow.ltx import LTXFamily, TinyLTXConfig, build_random_ltx

        cfg = getattr(TinyLTXConfig, real)() if size == "real" else TinyLTXConfig()
        pipe = build_random_ltx(cfg, seed=0, dtype=dtype, device=str(device))
        return LTXFamily(pipe, cfg.max_text_len, cfg.shift, cfg.frame_rate)
    if kind == "ltx2":
        from raypipe.flow.ltx2 import LTX2Family, TinyLTX2Config, build_random_ltx2

        cfg = getattr(TinyLTX2Config, real)() if size == "real" else TinyLTX2Config()
        pipe = build_random_ltx2(cfg, seed=0, dtype=dtype, device=str(device))
        return LTX2Family(pipe, cfg.max_text_len, None if cfg.dynamic_shift else cfg.shift, cfg.frame_rate)
    if kind == "hunyuan15":
        from raypipe.flow.hunyuan15 import Hunyuan15Family, TinyHunyuan15Config, build_random_hunyuan15

        cfg = getattr(TinyHunyuan15Config, real)() if size == "real" else TinyHunyuan15Config()
        pipe = build_random_hunyuan15(cfg, seed=0, dtype=dtype, device=str(device))
        return Hunyuan15Family(pipe, cfg.max_text_len, cfg.max_glyph_len, cfg.shift, crop_start=0)  # bare template
    if kind == "hunyuan":
        from raypipe.flow.hunyuan import BARE_TEMPLATE, HunyuanFamily, TinyHunyuanConfig, build_random_hunyuan

        cfg = getattr(TinyHunyuanConfig, real)() if size == "real" else TinyHunyuanConfig()
        pipe = build_random_hunyuan(cfg, seed=0, dtype=dtype, device=str(device))
        return HunyuanFamily(pipe, cfg.max_text_len, cfg.shift, cfg.guidance, prompt_template=BARE_TEMPLATE)
    from raypipe.flow.family import WanFamily
    from raypipe.flow.wan_build import TinyWanConfig, build_random_wan

    cfg = (
        getattr(TinyWanConfig, real)()
        if size == "real"
        else (getattr(TinyWanConfig, tiny)() if tiny else TinyWanConfig())
    )
    pipe = build_random_wan(cfg, seed=0, dtype=dtype, device=str(device))
    return WanFamily(pipe, max_text_len=cfg.max_text_len, shift=cfg.shift)


def family_clip(size: str, family: str) -> tuple[int, int, int]:
    return FAMILIES[family][3] if size == "real" else shapes(size)["clip"]


def param_counts(module) -> tuple[int, int]:
    """(all parameters, trainable parameters) of `module`."""
    return (sum(p.numel() for p in module.parameters()), sum(p.numel() for p in module.parameters() if p.requires_grad))


# --- the one-rank process group and engines ----------------------------------------------------------------------
def init_single_rank(backend: str) -> None:
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
    from raypipe.distributed.trainer import no_shm_op_build

    no_shm_op_build()  # no JIT build (and its file lock) of DeepSpeed's CPU shared-memory op
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend=backend)


def engine_for(model, settings, bf16: bool, micro_batch: int):
    import deepspeed

    from raypipe.distributed.trainer import deepspeed_config

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(settings, 1000, bf16=bf16, micro_batch=micro_batch),
    )
    return engine


# --- timing ------------------------------------------------------------------------------------------------------
def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def timed(step, device, steps: int, warmup: int) -> dict:
    """Run `step()` warmup + steps times; the median and mean seconds of the timed ones, and the peak memory."""
    import statistics

    reset_peak(device)
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {
        "s_per_step": round(statistics.median(times), 4),
        "s_mean": round(statistics.fmean(times), 4),
        "peak_gib": _peak_gib(device),
    }


def sweep(settings: list[dict], run_one, device) -> list[dict]:
    """`run_one(setting) -> dict` for each setting in order; an out-of-memory one is recorded and ends the sweep
    of its `group` (the later, larger settings of the same group are skipped)."""
    import torch

    rows, dead = [], set()
    for s in settings:
        if s.get("group") in dead:
            rows.append({**s, "result": "skipped (a smaller setting ran out of memory)"})
            continue
        try:
            rows.append({**s, **run_one(s)})
        except torch.OutOfMemoryError:
            rows.append({**s, "result": "oom"})
            dead.add(s.get("group"))
            reset_peak(device)
        print("  ", json.dumps(rows[-1]), flush=True)
    return rows
