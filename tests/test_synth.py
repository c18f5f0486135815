"""SynthPref generator: determinism, label balance and noise, manifest format, rendering at reference difficulty."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from raypipe.config import SynthConfig
from raypipe.video.decode import VideoError, read_all_frames
from raypipe.video.synth import (
    COLORS,
    DIRECTIONS,
    SHAPES,
    make_prompt,
    make_synthpref,
    parse_size,
    render_video,
    sample_pair,
)

DIMS = ("VQ", "MQ", "TA")


def _label_shares(cfg: SynthConfig, n: int) -> dict[str, dict[str, float]]:
    counts = {d: Counter() for d in DIMS}
    for i in range(n):
        labels = sample_pair(cfg, i).labels
        for d in DIMS:
            counts[d][labels[d]] += 1
    return {d: {k: counts[d][k] / n for k in ("A", "B", "same")} for d in DIMS}


def test_default_labels_are_balanced_with_about_30_percent_ties():
    shares = _label_shares(SynthConfig(seed=3), 1500)
    for d in DIMS:
        assert 0.24 <= shares[d]["same"] <= 0.36, (d, shares[d])
        assert abs(shares[d]["A"] - shares[d]["B"]) < 0.06, (d, shares[d])


def test_tie_shares_are_controllable():
    shares = _label_shares(SynthConfig(seed=4, tie_margin=0.3, ta_tie_share=0.6), 1500)
    # Independent uniform levels: P(|a - b| < m) = 1 - (1 - m)^2 = 0.51 for m = 0.3.
    for d in ("VQ", "MQ"):
        assert abs(shares[d]["same"] - 0.51) < 0.05, (d, shares[d])
    assert abs(shares["TA"]["same"] - 0.6) < 0.05, shares["TA"]
    for d in DIMS:
        assert abs(shares[d]["A"] - shares[d]["B"]) < 0.06, (d, shares[d])
    assert _label_shares(SynthConfig(seed=4, ta_tie_share=0.0), 300)["TA"]["same"] == 0.0


def test_label_noise_flips_the_expected_share_and_nothing_else():
    n, p = 1000, 0.3
    clean = [sample_pair(SynthConfig(seed=5), i) for i in range(n)]
    noisy = [sample_pair(SynthConfig(seed=5, label_noise=p), i) for i in range(n)]
    flipped = [c.labels[d] != z.labels[d] for c, z in zip(clean, noisy) for d in DIMS]
    assert abs(np.mean(flipped) - p) < 0.04
    # Levels, prompts and rendered attributes do not depend on the noise.
    assert all(c.a == z.a and c.b == z.b and c.prompt == z.prompt for c, z in zip(clean, noisy))
    # A flipped label is one of the two others, both equally likely: the shares stay balanced.
    shares = _label_shares(SynthConfig(seed=5, label_noise=1.0), n)
    for d in DIMS:
        assert abs(shares[d]["A"] - shares[d]["B"]) < 0.07, (d, shares[d])


def test_labels_follow_levels_and_attributes_follow_ta():
    cfg = SynthConfig(seed=6)
    for i in range(300):
        pair = sample_pair(cfg, i)
        for d, key in (("VQ", "vq"), ("MQ", "mq")):
            delta = getattr(pair.a, key) - getattr(pair.b, key)
            expect = "A" if delta >= cfg.tie_margin else "B" if -delta >= cfg.tie_margin else "same"
            assert pair.labels[d] == expect
        expect = "A" if pair.a.ta < pair.b.ta else "B" if pair.b.ta < pair.a.ta else "same"
        assert pair.labels["TA"] == expect
        for spec in (pair.a, pair.b):
            shown = (spec.color, spec.shape, spec.direction)
            assert sum(s != w for s, w in zip(shown, pair.prompt_attrs)) == spec.ta
            assert spec.color in COLORS and spec.shape in SHAPES and spec.direction in DIRECTIONS
        assert pair.prompt == make_prompt(*pair.prompt_attrs)


def test_ta_draws_follow_reference_probabilities():
    ta = np.array([[p.a.ta, p.b.ta] for p in (sample_pair(SynthConfig(seed=7), i) for i in range(1500))]).ravel()
    shares = np.bincount(ta, minlength=4) / ta.size
    assert np.allclose(shares, [0.4, 0.3, 0.2, 0.1], atol=0.03), shares


def test_render_video_reference_difficulty():
    rng = np.random.default_rng(0)
    clean = render_video("red", "square", "right", vq=1.0, mq=1.0, rng=rng)
    assert clean.shape == (16, 56, 56, 3) and clean.dtype == np.uint8
    # Clean: dark flat background, object fully inside every frame, moving 1.5 px per frame to the right.
    assert np.all(clean[:, 0] == clean[0, 0, 0]) and np.all(clean[:, :, -1] == clean[0, 0, 0])
    red = clean[..., 0].astype(float) - clean[..., 1]
    xs = np.array([np.average(np.arange(56), weights=np.clip(r, 0, None).sum(axis=0)) for r in red])
    assert np.allclose(np.diff(xs), 1.5, atol=0.05)
    # Anti-aliased: edge pixels between background and object.
    assert len(np.unique(clean[0, ..., 0])) > 5

    worst = render_video("red", "square", "right", vq=0.0, mq=0.0, rng=np.random.default_rng(1))
    steps = np.abs(np.diff(worst.astype(int), axis=0)).sum(axis=(1, 2, 3))
    assert int((steps == 0).sum()) == 3  # round((1 - 0) * 3) frozen frames repeat the previous one exactly
    background = worst[:, :, :3].astype(float) / 255  # top rows: never reached by the object
    assert 0.15 < background.std() < 0.25  # noise sigma 0.25, clipped at 0 on the dark background

    half = render_video("red", "square", "right", vq=1.0, mq=0.5, rng=np.random.default_rng(2))
    assert int((np.abs(np.diff(half.astype(int), axis=0)).sum(axis=(1, 2, 3)) == 0).sum()) == 2


def test_render_video_other_sizes_and_lengths():
    for size, frames in (((16, 16), 16), ((32, 32), 8), ((64, 96), 40)):
        video = render_video("blue", "triangle", "up", 0.5, 0.5, np.random.default_rng(0), frames=frames, size=size)
        assert video.shape == (frames, *size, 3)
    assert parse_size("32x48") == (32, 48)
    with pytest.raises(ValueError):
        parse_size("32")


def _small(seed: int, pairs: int = 3) -> SynthConfig:
    return SynthConfig(pairs=pairs, seed=seed)


def test_make_synthpref_manifest_and_videos(tmp_path):
    table = make_synthpref(tmp_path, _small(0))
    expected = ["path_A", "path_B", "prompt", "VQ", "MQ", "TA", "fps_A", "num_frames_A", "fps_B", "num_frames_B"]
    expected += [f"gt_{k}_{s}" for s in "AB" for k in ("vq", "mq", "ta")]
    expected += [f"gt_{k}_{s}" for s in "AB" for k in ("color", "shape", "direction")]
    expected += [f"MOS_{s}_{d}" for s in "AB" for d in ("VQ", "MQ", "TA")]
    assert table.column_names == expected
    for r in table.to_pylist():  # MOS (1-5) from the ground truth: 1 + 4 level; TA 5 - 4 wrong / 3
        assert r["MOS_A_VQ"] == pytest.approx(1 + 4 * r["gt_vq_A"])
        assert r["MOS_B_MQ"] == pytest.approx(1 + 4 * r["gt_mq_B"])
        assert r["MOS_A_TA"] == pytest.approx(5 - 4 * r["gt_ta_A"] / 3)
    assert pq.read_table(tmp_path / "manifest.parquet").equals(table)
    rows = table.to_pylist()
    assert [r["path_A"] for r in rows] == [f"videos/{i:06d}_A.mp4" for i in range(3)]
    for r in rows:
        assert r["VQ"] in ("A", "B", "same") and r["fps_A"] == 8.0 and r["num_frames_B"] == 16
        for side in "AB":
            assert not os.path.isabs(r[f"path_{side}"])
            frames = read_all_frames(str(tmp_path / r[f"path_{side}"]))
            assert not isinstance(frames, VideoError), frames
            assert frames.shape == (16, 56, 56, 3)
        pair = sample_pair(_small(0), rows.index(r))
        assert (r["prompt"], r["gt_vq_A"], r["gt_ta_B"], r["gt_shape_B"]) == (
            pair.prompt,
            pair.a.vq,
            pair.b.ta,
            pair.b.shape,
        )


def test_make_synthpref_is_deterministic(tmp_path):
    first = make_synthpref(tmp_path / "a", _small(1))
    again = make_synthpref(tmp_path / "b", _small(1))
    assert first.equals(again)
    for rel in first.column("path_A").to_pylist() + first.column("path_B").to_pylist():
        np.testing.assert_array_equal(
            read_all_frames(str(tmp_path / "a" / rel)), read_all_frames(str(tmp_path / "b" / rel))
        )
    # Pair i does not depend on how many pairs are made.
    longer = make_synthpref(tmp_path / "c", _small(1, pairs=4))
    assert longer.slice(0, 3).equals(first)
    other = make_synthpref(tmp_path / "d", _small(2))
    assert not other.equals(first)
    assert not np.array_equal(
        read_all_frames(str(tmp_path / "a" / "videos/000000_A.mp4")),
        read_all_frames(str(tmp_path / "d" / "videos/000000_A.mp4")),
    )


def test_bad_configs_are_refused(tmp_path):
    for bad in (dict(size="55x56"), dict(frames=1), dict(label_noise=1.5), dict(ta_tie_share=-0.1)):
        with pytest.raises(ValueError):
            make_synthpref(tmp_path, dataclasses.replace(_small(0), **bad))


def test_i2v_pairs_share_a_clean_first_frame_and_continue_from_it():
    from raypipe.video.synth import COLOR_RGB, object_track, render_pair, sample_pair

    cfg = SynthConfig(pairs=6, seed=4, i2v=True)
    for i in range(6):
        pair = sample_pair(cfg, i)
        a, b = render_pair(cfg, i, pair)
        assert np.array_equal(a[0], b[0])
        # clean: only background and the prompt's colour (anti-aliased edge in between), no noise
        bright = a[0].reshape(-1, 3)[a[0].reshape(-1, 3).max(1) > 128]
        target = np.round(np.asarray(COLOR_RGB[pair.prompt_attrs[0]]) * 255)
        assert len(bright) > 50 and np.abs(np.median(bright, axis=0) - target).max() <= 1
        # the labels (ground truth of the rest) are those of the text-to-video pair
        assert sample_pair(dataclasses.replace(cfg, i2v=False), i) == pair
    # a given start is the path's first centre; the object then stops at the edge instead of leaving
    centres, _ = object_track("left", 1.0, np.random.default_rng(0), 30, (56, 56), 7.0, 1.5, 6.0, start=(20.0, 30.0))
    assert tuple(centres[0]) == (20.0, 30.0) and centres[:, 0].min() == pytest.approx(8.0)
