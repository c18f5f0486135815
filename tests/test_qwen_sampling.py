"""The "qwen" sampling convention (qwen-vl-utils 0.0.8, as the released VideoReward was trained) against
qwen-vl-utils itself, the resize against a brute-force antialiased bicubic, and decoding with it. No Ray."""

from __future__ import annotations

import importlib
import itertools
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from raypipe.config import ConfigError, SamplingConfig, load_config
from raypipe.video.decode import VideoClip, VideoError, decode_video, read_all_frames, resize_frames
from raypipe.video.sampling import (
    SamplingError,
    num_sampled_frames,
    plan_frames,
    plan_size,
    qwen_frame_indices,
    qwen_num_frames,
    qwen_resized_size,
    sample_frame_indices,
)
from tests.conftest import moving_square_frames

RELEASED = {"convention": "qwen", "min_pixels": 128 * 28 * 28, "max_pixels": 448 * 448, "max_frames": 768}
_STUBBED = ("torchvision", "qwen_vl_utils")


def _stubbed(name: str) -> bool:
    return any(name == s or name.startswith(s + ".") for s in _STUBBED)


@pytest.fixture(scope="module")
def qwen():
    """qwen_vl_utils.vision_process, imported over a stub torchvision (its C ops do not load with our torch; the
    functions compared here never touch it). sys.modules is restored afterwards."""
    saved = {name: mod for name, mod in sys.modules.items() if _stubbed(name)}
    for name in saved:
        del sys.modules[name]
    tv = types.ModuleType("torchvision")
    tv.__version__ = "0.19.0"
    tv.io = types.ModuleType("torchvision.io")
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.transforms.functional = types.ModuleType("torchvision.transforms.functional")
    tv.transforms.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic")
    sys.modules.update(
        {
            "torchvision": tv,
            "torchvision.io": tv.io,
            "torchvision.transforms": tv.transforms,
            "torchvision.transforms.functional": tv.transforms.functional,
        }
    )
    try:
        yield importlib.import_module("qwen_vl_utils.vision_process")
    finally:
        for name in [n for n in sys.modules if _stubbed(n)]:
            del sys.modules[name]
        sys.modules.update(saved)


# --- count and indices ------------------------------------------------------------------------------------------
def _theirs_indices(qwen, total, video_fps, fps, min_frames):
    try:
        n = qwen.smart_nframes({"fps": fps, "min_frames": min_frames}, total_frames=total, video_fps=video_fps)
    except ValueError:
        return "error"
    return torch.linspace(0, total - 1, n).round().long().tolist()


def _ours_indices(total, video_fps, fps, min_frames, max_frames):
    try:
        return qwen_frame_indices(total, video_fps, fps, min_frames, max_frames)
    except SamplingError as e:
        assert e.kind == "too_short", e
        return "error"


@pytest.mark.parametrize("min_frames, cap", [(4, 768), (4, 64), (2, 16), (5, 768)])
def test_frame_plan_matches_qwen_vl_utils(qwen, monkeypatch, min_frames, cap):
    monkeypatch.setattr(qwen, "FPS_MAX_FRAMES", cap)  # our max_frames is qwen's FPS_MAX_FRAMES cap
    totals = [*range(1, 201), 500, 1537, 18000, 100_000]
    video_fpss = [1, 7.5, 8, 23.976, 24, 30, 60, 120]
    fpss = [0.5, 1, 2, 3, 4, 240]  # 240: above every clip's own rate
    mismatches, errors = [], 0
    for total, video_fps, fps in itertools.product(totals, video_fpss, fpss):
        theirs = _theirs_indices(qwen, total, video_fps, fps, min_frames)
        ours = _ours_indices(total, video_fps, fps, min_frames, cap)
        errors += theirs == "error"
        if ours != theirs:
            mismatches.append((total, video_fps, fps, ours, theirs))
    assert not mismatches, mismatches[:5]
    assert errors > 0  # the error case (a 1-frame clip) was exercised: both raise


def test_hand_worked_banker_rounding_of_the_count(qwen):
    # 20 frames at 8 fps = 2.5 s; x 2 fps = 5 frames -> round(5 / 2) * 2 = round(2.5) * 2 = 4 (half to even)
    assert qwen.smart_nframes({"fps": 2.0}, total_frames=20, video_fps=8.0) == 4
    assert qwen_num_frames(20, 8.0, 2.0) == 4
    assert qwen_frame_indices(20, 8.0, 2.0) == [0, 6, 13, 19]  # linspace(0, 19, 4) = 0, 6.33, 12.67, 19
    assert num_sampled_frames(20, 8.0, 2.0) == 6  # ours (SPEC §2.3) rounds the half up


def test_qwen_count_edges():
    assert qwen_num_frames(3, 8.0, 2.0) == 2  # the clip's own (even) length wins over min_frames
    assert qwen_num_frames(2, 8.0, 2.0) == 2
    with pytest.raises(SamplingError) as e:
        qwen_num_frames(1, 8.0, 2.0)
    assert e.value.kind == "too_short"
    with pytest.raises(SamplingError) as e:
        qwen_num_frames(0, 8.0)
    assert e.value.kind == "empty"
    with pytest.raises(SamplingError) as e:
        qwen_num_frames(10, float("nan"))
    assert e.value.kind == "corrupt"
    with pytest.raises(ValueError):
        qwen_num_frames(10, 8.0, fps=0)
    assert qwen_num_frames(100_000, 30.0, 2.0) == 768  # FPS_MAX_FRAMES


# --- size --------------------------------------------------------------------------------------------------------
SIZES = [
    (16, 16), (28, 28), (14, 14), (27, 29), (41, 43), (70, 70), (42, 98), (56, 84), (239, 427), (480, 640),
    (720, 1280), (1080, 1920), (1920, 1080), (2160, 3840), (3840, 2160), (20, 3000), (3000, 20), (28, 4200),
    (1, 200), (1, 201), (10, 1500), (1, 1),
]  # fmt: skip
BUDGETS = [
    (128 * 28 * 28, 448 * 448), (128 * 28 * 28, 768 * 28 * 28), (56 * 56, 448 * 448), (28 * 28, 56 * 84),
    (4 * 28 * 28, 16384 * 28 * 28), (128 * 28 * 28, 56 * 56), (28 * 28, 28 * 28),
]  # fmt: skip


def _theirs_size(qwen, h, w, min_pixels, max_pixels):
    try:
        size = qwen.smart_resize(h, w, 28, min_pixels, max_pixels)
    except ValueError:
        return "error"
    return "error" if 0 in size else size  # a 0 side: qwen's resize would then fail


def _ours_size(h, w, min_pixels, max_pixels):
    try:
        return qwen_resized_size(h, w, min_pixels, max_pixels)
    except SamplingError as e:
        assert e.kind == "too_large", e
        return "error"


def test_resized_size_matches_qwen_vl_utils(qwen):
    rng = np.random.default_rng(0)
    sizes = SIZES + [tuple(int(v) for v in rng.integers(1, 4000, 2)) for _ in range(400)]
    mismatches, errors = [], 0
    for (h, w), (min_pixels, max_pixels) in itertools.product(sizes, BUDGETS):
        theirs = _theirs_size(qwen, h, w, min_pixels, max_pixels)
        ours = _ours_size(h, w, min_pixels, max_pixels)
        errors += theirs == "error"
        if ours != theirs:
            mismatches.append((h, w, min_pixels, max_pixels, ours, theirs))
    assert not mismatches, mismatches[:5]
    assert errors > 0


def test_resized_size_hand_worked():
    assert qwen_resized_size(70, 70, 28 * 28, 448 * 448) == (56, 56)  # 70 / 28 = 2.5 -> 2 (half to even)
    assert qwen_resized_size(56, 56, 128 * 28 * 28, 448 * 448) == (336, 336)  # small videos are upscaled
    with pytest.raises(SamplingError) as e:
        qwen_resized_size(1, 201, 28 * 28, 448 * 448)
    assert e.value.kind == "too_large"


# --- resize: torch bicubic antialias vs a brute-force numpy version ----------------------------------------------
def _keys_cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _aa_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in]: antialiased bicubic taps as PyTorch documents them (Keys a = -0.5, support 2 * max(scale, 1),
    taps (j - center + 0.5) / max(scale, 1) with center = (i + 0.5) * scale, normalised per output pixel)."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - 2 * stretch + 0.5), 0)
        hi = min(int(center + 2 * stretch + 0.5), n_in)
        w = _keys_cubic((np.arange(lo, hi) - center + 0.5) / stretch)
        m[i, lo:hi] = w / w.sum()
    return m


def _brute_force(frames: np.ndarray, h: int, w: int) -> np.ndarray:
    rows, cols = _aa_matrix(frames.shape[1], h), _aa_matrix(frames.shape[2], w)
    out = np.einsum("yi,tijc->tyjc", rows, frames.astype(np.float64))  # separable: one axis, then the other
    out = np.einsum("tyjc,xj->tyxc", out, cols)
    return np.round(np.clip(out, 0, 255)).astype(np.uint8)


@pytest.mark.parametrize(
    "src, dst",
    [((37, 53), (28, 28)), ((16, 16), (112, 112)), ((60, 90), (28, 56)), ((30, 200), (56, 140)),
     ((56, 100), (56, 84)), ((201, 97), (84, 112))],
)  # fmt: skip
def test_qwen_resize_matches_brute_force_antialiased_bicubic(src, dst):
    frames = np.random.default_rng(1).integers(0, 256, (2, *src, 3), dtype=np.uint8)
    ours = resize_frames(frames, *dst, convention="qwen")
    truth = _brute_force(frames, *dst)
    assert ours.shape == (2, *dst, 3) and ours.dtype == np.uint8 and ours.flags.c_contiguous
    diff = np.abs(ours.astype(int) - truth.astype(int))
    assert diff.max() <= 1  # float32 weights in torch vs float64 here: a rounding step at most
    assert (diff == 0).mean() > 0.99


def test_qwen_resize_keeps_constant_frames_and_equal_sizes():
    flat = np.full((3, 45, 61, 3), 137, np.uint8)
    for size in [(28, 28), (112, 140), (28, 84)]:
        assert (resize_frames(flat, *size, convention="qwen") == 137).all()
    frames = np.random.default_rng(2).integers(0, 256, (2, 56, 84, 3), dtype=np.uint8)
    assert np.array_equal(resize_frames(frames, 56, 84, convention="qwen"), frames)  # torchvision skips too
    with pytest.raises(ValueError):
        resize_frames(frames, 28, 28, convention="bogus")


# --- config and decoding -------------------------------------------------------------------------------------------
def test_convention_is_validated():
    assert SamplingConfig().convention == "raypipe"
    with pytest.raises(ConfigError, match="convention"):
        SamplingConfig(convention="qwen2")
    from raypipe.config import DataConfig

    assert load_config(DataConfig, None, ["sampling.convention=qwen"]).sampling.convention == "qwen"
    with pytest.raises(ConfigError, match="convention"):
        load_config(DataConfig, None, ["sampling.convention=banker"])


def test_plan_dispatch():
    qwen_cfg = SamplingConfig(**RELEASED)
    assert plan_frames(20, 8.0, qwen_cfg) == [0, 6, 13, 19]
    assert plan_frames(20, 8.0, SamplingConfig()) == sample_frame_indices(20, 8.0) == [0, 4, 8, 11, 15, 19]
    assert plan_size(56, 56, qwen_cfg) == (336, 336) and plan_size(56, 56, SamplingConfig()) == (56, 56)
    every = SamplingConfig(all_frames=True, max_frames=5, convention="qwen")  # all_frames: same in both
    assert plan_frames(9, 8.0, every) == [0, 1, 2, 3, 4]


def test_decode_with_qwen_convention(make_mp4):
    path = make_mp4("q.mp4", t=20, fps=8)
    clip = decode_video(path, SamplingConfig(**RELEASED))
    assert isinstance(clip, VideoClip) and clip.backend == "decord"
    assert clip.info.indices == [0, 6, 13, 19]
    assert clip.frames.shape == (4, 336, 336, 3) and (clip.info.height, clip.info.width) == (336, 336)
    native = read_all_frames(path)[clip.info.indices]
    assert np.array_equal(clip.frames, resize_frames(native, 336, 336, convention="qwen"))
    assert np.abs(clip.frames.astype(int) - _brute_force(native, 336, 336).astype(int)).max() <= 1


def test_decode_default_convention_unchanged(make_mp4):
    path = make_mp4("d.mp4", t=20, fps=8)
    clip = decode_video(path, SamplingConfig())
    assert clip.info.indices == [0, 4, 8, 11, 15, 19]  # 2.5 s x 2 fps = 5 -> 6 (half up), SPEC §2.3
    assert clip.frames.shape == (6, 56, 56, 3)
    assert np.array_equal(clip.frames, read_all_frames(path)[clip.info.indices])  # already the planned size
    wide = make_mp4("w.mp4", t=8, h=120, w=200, fps=4)
    sampling = SamplingConfig(fps=4, max_pixels=56 * 84, min_pixels=28 * 28)
    clip = decode_video(wide, sampling)
    native = read_all_frames(wide)[clip.info.indices]
    pil = np.stack([np.asarray(Image.fromarray(f).resize((84, 28), Image.BICUBIC)) for f in native])
    assert clip.frames.shape == (8, 28, 84, 3) and np.array_equal(clip.frames, pil)  # PIL bicubic, as before


def test_qwen_convention_through_pyav_and_pillow(make_mp4, monkeypatch, tmp_path):
    import raypipe.video.decode as decode

    path = make_mp4("p.mp4", t=20, fps=8)
    monkeypatch.setattr(decode, "_decode_decord", lambda *a, **k: None)  # decord cannot read it: PyAV decodes
    clip = decode_video(path, SamplingConfig(**RELEASED))
    assert isinstance(clip, VideoClip) and clip.backend == "pyav" and clip.info.indices == [0, 6, 13, 19]
    native = decode_video(path, SamplingConfig(all_frames=True, max_frames=100), native=True).frames
    assert np.array_equal(clip.frames, resize_frames(native[clip.info.indices], 336, 336, convention="qwen"))
    frames = moving_square_frames(12, 56, 56)
    gif = tmp_path / "anim.gif"
    images = [Image.fromarray(f) for f in frames]
    images[0].save(gif, format="GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    clip = decode_video(str(gif), SamplingConfig(**RELEASED))
    assert isinstance(clip, VideoClip) and clip.backend == "pillow", clip
    assert clip.info.indices == [0, 4, 7, 11] and clip.frames.shape == (4, 336, 336, 3)  # 1.2 s x 2 -> 4 (min)


def test_qwen_errors_are_classified(make_mp4):
    result = decode_video(make_mp4("one.mp4", t=1), SamplingConfig(**RELEASED))
    assert isinstance(result, VideoError) and result.kind == "too_short"
