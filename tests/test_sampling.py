"""SPEC §2.3 frame sampling and resizing, on hand-worked cases."""

import pytest

from raypipe.video.sampling import (
    SamplingError,
    num_sampled_frames,
    resized_size,
    round_to_multiple,
    sample_frame_indices,
)


def test_round_to_multiple_rounds_halves_up():
    assert round_to_multiple(5, 2) == 6  # banker's rounding would give 4
    assert round_to_multiple(4.9, 2) == 4
    assert round_to_multiple(1, 2) == 2
    assert round_to_multiple(0.9, 2) == 0


def test_short_clip_at_2fps():
    # 16 frames at 8 fps = 2 s; 2 s x 2 fps = 4 frames; linspace(0, 15, 4) = 0, 5, 10, 15
    assert sample_frame_indices(16, 8.0, fps=2) == [0, 5, 10, 15]


def test_synthpref_clip_at_4fps():
    # linspace(0, 15, 8) = 0, 2.14, 4.29, 6.43, 8.57, 10.71, 12.86, 15
    assert sample_frame_indices(16, 8.0, fps=4) == [0, 2, 4, 6, 9, 11, 13, 15]


def test_long_clip_is_capped_at_max_frames():
    # 10 minutes at 30 fps: 1200 frames at 2 fps, capped at 64
    idx = sample_frame_indices(18000, 30.0, fps=2, max_frames=64)
    assert len(idx) == 64 and idx[0] == 0 and idx[-1] == 17999
    assert all(b > a for a, b in zip(idx, idx[1:]))


def test_five_seconds_at_24fps():
    # 120 frames, 5 s x 2 fps = 10; linspace(0, 119, 10): step 13.22
    assert sample_frame_indices(120, 24.0, fps=2) == [0, 13, 26, 40, 53, 66, 79, 93, 106, 119]


def test_count_rounds_half_up_to_even():
    # 25 frames at 10 fps = 2.5 s x 2 fps = 5 -> 6 (even, halves up)
    assert num_sampled_frames(25, 10.0, fps=2) == 6


def test_odd_frame_count_short_clip_clamps_to_min_frames():
    # 15 frames at 30 fps = 0.5 s -> 1 frame -> rounds to 2 -> clamped up to 4; linspace(0, 14, 4) = 0, 4.67, 9.33, 14
    assert sample_frame_indices(15, 30.0, fps=2) == [0, 5, 9, 14]


def test_fps_above_video_fps_takes_every_frame_it_can_evenly():
    # 9 frames at 8 fps sampled at 30 fps: 33.75 -> 34, capped at the largest even count 8
    # linspace(0, 8, 8) = 0, 1.14, 2.29, 3.43, 4.57, 5.71, 6.86, 8
    assert sample_frame_indices(9, 8.0, fps=30) == [0, 1, 2, 3, 5, 6, 7, 8]
    assert sample_frame_indices(16, 8.0, fps=30) == list(range(16))


def test_counts_are_always_even():
    for total in range(4, 200, 7):
        for fps in (0.5, 1, 2, 3, 7.5):
            n = num_sampled_frames(total, 23.976, fps=fps, min_frames=4, max_frames=31)
            assert n % 2 == 0 and 4 <= n <= 30


def test_too_short_and_empty():
    with pytest.raises(SamplingError) as e:
        sample_frame_indices(3, 8.0)
    assert e.value.kind == "too_short"
    assert sample_frame_indices(4, 8.0) == [0, 1, 2, 3]
    with pytest.raises(SamplingError) as e:
        sample_frame_indices(0, 8.0)
    assert e.value.kind == "empty"
    with pytest.raises(SamplingError) as e:
        sample_frame_indices(10, float("nan"))
    assert e.value.kind == "corrupt"


def test_odd_min_frames_rounds_up_to_even():
    assert num_sampled_frames(100, 25.0, fps=0.1, min_frames=5) == 6


@pytest.mark.parametrize(
    "hw, expected",
    [
        ((56, 56), (56, 56)),  # SynthPref: already a multiple of 28 and inside the budget
        ((448, 448), (448, 448)),  # exactly the budget
        ((360, 640), (336, 588)),  # beta = sqrt(230400/200704) = 1.0714: 336.0 -> 336, 597.3 -> 588
        ((640, 360), (588, 336)),  # portrait: the same, transposed
        ((1080, 1920), (336, 588)),  # beta = 3.2143: 336.0 -> 336, 597.3 -> 588
        ((4320, 7680), (336, 588)),  # 8K: beta = 12.857
        ((10, 10), (56, 56)),  # tiny: up to min_pixels 3136: beta = 5.6 -> 56 x 56
        ((100, 30), (112, 28)),  # rounds to 112 x 28 = 3136, not below min_pixels
    ],
)
def test_resized_size(hw, expected):
    assert resized_size(*hw, min_pixels=56 * 56, max_pixels=448 * 448) == expected


def test_resized_size_keeps_budget_and_factor():
    for h in (17, 99, 240, 481, 720, 1333):
        for w in (23, 128, 360, 999, 1280):
            rh, rw = resized_size(h, w)
            assert rh % 28 == 0 and rw % 28 == 0
            assert rh * rw <= 448 * 448
            # aspect is kept to within one patch of rounding
            assert abs(rh / rw - h / w) <= (h / w) * (28 / min(rh, rw)) + 1e-9


def test_absurd_aspect_ratio_is_too_large():
    with pytest.raises(SamplingError) as e:
        resized_size(10, 3000)
    assert e.value.kind == "too_large"
