"""The SynthPref oracle: agreement with the generator's ground truth on decoded mp4s, and robustness to any video."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from raypipe.config import SynthConfig
from raypipe.video.oracle import judge, judge_video, parse_prompt
from raypipe.video.synth import make_synthpref, render_video

PAIRS_PER_SEED = 30  # two seeds -> 120 videos


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """Oracle scores and ground truth for every video of two small SynthPref sets (reference difficulty)."""
    rows = []
    for seed in (11, 12):
        out = tmp_path_factory.mktemp(f"synth{seed}")
        for r in make_synthpref(out, SynthConfig(pairs=PAIRS_PER_SEED, seed=seed)).to_pylist():
            scores = {s: judge_video(str(out / r[f"path_{s}"]), r["prompt"]) for s in "AB"}
            rows.append((r, scores))
    return rows


def _per_video(judged):
    return [(r[f"gt_vq_{s}"], r[f"gt_mq_{s}"], r[f"gt_ta_{s}"], scores[s], r, s) for r, scores in judged for s in "AB"]


def test_oracle_meets_targets_on_synthpref(judged):
    videos = _per_video(judged)
    assert len(videos) == 4 * PAIRS_PER_SEED
    assert not any("error" in v[3] for v in videos)
    rho_vq = spearmanr([v[3]["VQ"] for v in videos], [v[0] for v in videos])[0]
    rho_mq = spearmanr([v[3]["MQ"] for v in videos], [v[1] for v in videos])[0]
    ta_exact = np.mean([v[3]["wrong_attributes"] == v[2] for v in videos])
    assert rho_vq >= 0.9, rho_vq
    assert rho_mq >= 0.9, rho_mq
    assert ta_exact >= 0.9, ta_exact
    assert all(v[3]["TA"] == 3 - v[3]["wrong_attributes"] for v in videos)


def test_oracle_sees_the_rendered_attributes(judged):
    videos = _per_video(judged)
    for attr in ("color", "shape", "direction"):
        acc = np.mean([v[3][attr] == v[4][f"gt_{attr}_{v[5]}"] for v in videos])
        assert acc >= 0.95, (attr, acc)


def test_oracle_agrees_with_clean_labels(judged):
    """On pairs the generator does not call a tie, the oracle prefers the same side (it plays the annotator)."""
    agree = {}
    for dim in ("VQ", "MQ", "TA"):
        hits = [(scores["A"][dim] > scores["B"][dim]) == (r[dim] == "A") for r, scores in judged if r[dim] != "same"]
        agree[dim] = np.mean(hits)
    assert min(agree.values()) >= 0.9, agree


def test_levels_read_as_estimates(judged):
    videos = _per_video(judged)
    assert np.mean([abs(v[3]["VQ"] - v[0]) for v in videos]) < 0.12
    assert np.mean([abs(v[3]["MQ"] - v[1]) for v in videos]) < 0.12


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((0, 56, 56, 3), np.uint8),  # empty
        np.zeros((16, 56, 56, 3), np.uint8),  # black
        np.full((8, 32, 32, 3), 200, np.uint8),  # flat grey
        np.random.default_rng(0).integers(0, 256, (16, 56, 56, 3)).astype(np.uint8),  # pure noise
        np.zeros((4, 2, 2, 3), np.uint8),  # too small to hold anything
    ],
)
def test_no_object_gets_the_lowest_scores(frames):
    scores = judge(frames, "a red circle moving left")
    assert scores["VQ"] == 0.0 and scores["MQ"] == 0.0
    assert scores["wrong_attributes"] == 3 and scores["TA"] == 0.0
    assert scores["color"] is None and scores["object_found"] is False


def test_any_size_and_length_is_judged():
    prompt = "a green triangle moving down"
    for size, frames in (((16, 16), 16), ((32, 32), 16), ((32, 32), 2), ((64, 96), 40)):
        good = judge(
            render_video("green", "triangle", "down", 1.0, 1.0, np.random.default_rng(0), frames=frames, size=size),
            prompt,
        )
        bad = judge(
            render_video("green", "triangle", "down", 0.0, 0.0, np.random.default_rng(0), frames=frames, size=size),
            prompt,
        )
        assert good["VQ"] > bad["VQ"] + 0.4, (size, frames, good, bad)
        assert good["wrong_attributes"] == 0, (size, frames, good)
        if frames > 2:
            assert good["MQ"] > bad["MQ"] + 0.4, (size, frames, good, bad)


def test_stillness_and_missing_motion_are_punished():
    clip = render_video("red", "circle", "left", 1.0, 1.0, np.random.default_rng(0))
    moving = judge(clip, "a red circle moving left")
    still = judge(np.repeat(clip[:1], 16, axis=0), "a red circle moving left")
    single = judge(clip[:1], "a red circle moving left")
    assert moving["MQ"] > 0.95 and moving["wrong_attributes"] == 0
    assert still["MQ"] == 0.0 and still["direction"] is None and still["wrong_attributes"] == 1
    assert single["MQ"] == 0.0 and single["VQ"] > 0.9
    # The wrong prompt is caught attribute by attribute.
    assert judge(clip, "a blue square moving up")["wrong_attributes"] == 3
    assert judge(clip, "a red square moving left")["wrong_attributes"] == 1


def test_a_grown_object_is_still_measured():
    big = judge(
        render_video("white", "circle", "right", 1.0, 1.0, np.random.default_rng(0), radius=21, speed=0.5),
        "a white circle moving right",
    )
    assert big["wrong_attributes"] == 0 and big["VQ"] > 0.9
    assert 18 < big["radius"] < 24  # reported, so that a reward model rewarding size is visible


def test_parse_prompt():
    assert parse_prompt("a red circle moving left") == ("red", "circle", "left")
    assert parse_prompt("A Purple triangle, moving upwards.") == ("purple", "triangle", "up")
    assert parse_prompt("a cat") == (None, None, None)
    assert parse_prompt("") == (None, None, None)
    # Parts the prompt does not name cannot be contradicted.
    clip = render_video("red", "circle", "left", 1.0, 1.0, np.random.default_rng(0))
    assert judge(clip, "something moving right")["wrong_attributes"] == 1


def test_judge_video_reports_decode_errors(tmp_path):
    missing = judge_video(str(tmp_path / "nope.mp4"), "a red circle moving left")
    assert missing["error"] == "missing" and missing["message"]
    (tmp_path / "text.mp4").write_text("not a video")
    assert judge_video(str(tmp_path / "text.mp4"), "a red circle moving left")["error"] in ("not_a_video", "corrupt")
