"""LiFT-style ratings (SPEC §8): answer parsing, weights by hand, the HRA JSON and the pointwise manifest as one
table, and SynthPref's ratings with reasons against its ground truth."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raypipe.config import SynthConfig
from raypipe.data.hra import read_hra_json, write_hra_json
from raypipe.data.manifest import ManifestError
from raypipe.data.ratings import (
    AnswerError,
    by_video,
    format_answer,
    lift_weight,
    load_ratings,
    parse_answer,
    parse_rating,
    rating_of,
    read_pointwise_ratings,
)
from raypipe.video import synth_ratings as sr
from raypipe.video.synth import make_synthpref, sample_pair

QUESTIONS = {"VQ": "How is the quality? Say why.", "MQ": "How is the motion?", "TA": "Does it match?"}


@pytest.mark.parametrize(
    "answer, rating, reason",
    [
        ("Good. There are no obvious problems.", "Good", "There are no obvious problems."),
        ("bad . the square is green , not red .", "Bad", "the square is green , not red ."),
        ("NORMAL, the motion jitters", "Normal", "the motion jitters"),
        ("  Good!", "Good", ""),
        ("Bad.", "Bad", ""),
        ("Normal:\nit is a little blurry", "Normal", "it is a little blurry"),
    ],
)
def test_parse_answer_reads_the_first_word_exactly(answer, rating, reason):
    assert parse_answer(answer) == (rating, reason)


@pytest.mark.parametrize(
    "answer",
    [
        "Goodness. It is fine.",  # a prefix is not the word
        "Not bad at all.",  # LiFT's substring search would say Bad
        "The video is Good.",  # the rating must come first
        "It looks normal.",  # ... also for Normal, which LiFT's search checks first
        "",
        "   ",
        "G00d.",
        "Good-ish",
    ],
)
def test_unparsable_answers_are_errors_never_good(answer):
    with pytest.raises(AnswerError, match="does not start with Good, Normal or Bad"):
        parse_rating(answer)


def test_non_text_answer_is_an_error():
    with pytest.raises(AnswerError, match="must be text"):
        parse_rating(None)


def test_format_answer_round_trips_through_parse():
    for rating in ("Good", "Normal", "Bad"):
        for reason in ("", "The motion jitters a little."):
            assert parse_answer(format_answer(rating, reason)) == (rating, reason)
    with pytest.raises(ValueError):
        format_answer("good", "x")  # the canonical word only


def test_lift_weight_by_hand():
    # (0.9 + 0.05 + 0.2) / 3 = 0.38333...
    assert lift_weight({"VQ": "Good", "MQ": "Bad", "TA": "Normal"}) == pytest.approx(1.15 / 3)
    assert lift_weight({"VQ": "Good", "MQ": "Good", "TA": "Good"}) == pytest.approx(0.9)
    assert lift_weight({"VQ": "Bad"}) == pytest.approx(0.05)
    custom = {"Good": 1.0, "Normal": 0.5, "Bad": 0.0}
    assert lift_weight({"VQ": "Normal", "MQ": "Bad"}, custom) == pytest.approx(0.25)
    assert lift_weight({"VQ": "Good", "MQ": None}) is None  # never a default for a missing rating
    assert lift_weight({}) is None
    with pytest.raises(ValueError, match="weight map"):
        lift_weight({"VQ": "Good"}, {"Good": 1.0, "Bad": 0.0})
    with pytest.raises(ValueError, match="weight map"):
        lift_weight({"VQ": "Good"}, {"Good": float("nan"), "Normal": 0.1, "Bad": 0.0})


@pytest.mark.parametrize(
    "value, rating",
    [
        ("Good", "Good"),
        ("normal", "Normal"),
        ("BAD.", "Bad"),
        (3, "Good"),
        (2.0, "Normal"),
        ("1", "Bad"),
        (4, None),
        (2.5, None),
        ("fine", None),
        (None, None),
        (True, None),
        (float("nan"), None),
        ("Not bad", None),
    ],
)
def test_rating_of_manifest_cells(value, rating):
    assert rating_of(value) == rating


def _pointwise_table() -> pa.Table:
    return pa.table(
        {
            "path": ["v/a.mp4", "v/b.mp4", "v/c.mp4"],
            "prompt": ["a red circle moving left", "a blue square moving up", "a cat"],
            "VQ": ["Good", "Bad", None],
            "reason_VQ": ["It is sharp.", "It is blurry.", None],
            "MQ": ["Normal", "3", "2"],
            "reason_MQ": ["It jitters.", "Smooth.", ""],
            "TA": ["Bad", None, "Good"],
            "reason_TA": ["The circle is green, not red.", None, "As asked."],
        }
    )


def test_hra_json_and_pointwise_manifest_give_the_same_table(tmp_path):
    long = read_pointwise_ratings(_pointwise_table(), ["VQ", "MQ", "TA"])
    assert long.num_rows == 7  # 9 cells, 2 unrated
    assert long.slice(0, 3).to_pylist()[2] == {
        "path": "v/a.mp4",
        "prompt": "a red circle moving left",
        "dimension": "TA",
        "rating": "Bad",
        "reason": "The circle is green, not red.",
    }
    n = write_hra_json(long, QUESTIONS, tmp_path / "hra.json")
    assert n == 7
    entries = json.loads((tmp_path / "hra.json").read_text())
    assert entries[0]["conversations"][0]["value"] == "<video>\n a red circle moving left How is the quality? Say why."
    assert entries[0]["conversations"][1] == {"from": "gpt", "value": "Good. It is sharp."}
    assert read_hra_json(tmp_path / "hra.json", QUESTIONS).equals(long)
    # and the per-video view of both sources, loaded as a job loads them
    pq.write_table(_pointwise_table(), tmp_path / "ratings.parquet")
    a = load_ratings(str(tmp_path / "ratings.parquet"), ["VQ", "MQ", "TA"], QUESTIONS)
    b = load_ratings(str(tmp_path / "hra.json"), ["VQ", "MQ", "TA"], QUESTIONS)
    cols = ["path", "prompt", *(f"{k}_{d}" for d in ("VQ", "MQ", "TA") for k in ("rating", "reason")), "uri"]
    assert a.select(cols).equals(b.select(cols))
    assert a.column("rating_MQ").to_pylist() == ["Normal", "Good", "Normal"]
    assert a.column("uri").to_pylist()[0] == str(tmp_path / "v/a.mp4")


def test_hra_json_refusals_name_the_entry(tmp_path):
    def write(obj):
        (tmp_path / "h.json").write_text(json.dumps(obj))
        return tmp_path / "h.json"

    good = {
        "video": "a.mp4",
        "conversations": [
            {"from": "human", "value": "<video>\n p Does it match?"},
            {"from": "gpt", "value": "Good. Fine."},
        ],
    }
    assert read_hra_json(write([good]), QUESTIONS).num_rows == 1
    with pytest.raises(ManifestError, match="row 1.*none of the configured questions"):
        bad = json.loads(json.dumps(good))
        bad["conversations"][0]["value"] = "<video>\n p Something else?"
        read_hra_json(write([good, bad]), QUESTIONS)
    with pytest.raises(ManifestError, match="row 0.*does not start with Good"):
        bad = json.loads(json.dumps(good))
        bad["conversations"][1]["value"] = "Not bad."
        read_hra_json(write([bad]), QUESTIONS)
    with pytest.raises(ManifestError, match="row 0.*'video'"):
        read_hra_json(write([{"conversations": good["conversations"]}]), QUESTIONS)
    with pytest.raises(ManifestError, match="unreadable JSON"):
        (tmp_path / "h.json").write_text("[{")
        read_hra_json(tmp_path / "h.json", QUESTIONS)
    with pytest.raises(ManifestError, match="file not found"):
        read_hra_json(tmp_path / "missing.json", QUESTIONS)


def test_a_video_rated_twice_on_one_dimension_is_refused():
    long = read_pointwise_ratings(_pointwise_table(), ["VQ"])
    twice = pa.concat_tables([long, long.slice(0, 1)])
    with pytest.raises(ValueError, match="rated twice on VQ"):
        by_video(twice, ["VQ"])


def test_synth_ratings_follow_the_ground_truth(tmp_path):
    cfg = SynthConfig(pairs=40, seed=5, frames=4, size="16x16")
    make_synthpref(tmp_path, cfg)
    table = pq.read_table(tmp_path / "ratings.parquet").to_pylist()
    assert len(table) == 80
    for k, row in enumerate(table):
        spec = getattr(sample_pair(cfg, k // 2), "ab"[k % 2])
        assert row["path"] == f"videos/{k // 2:06d}_{'AB'[k % 2]}.mp4"
        assert row["VQ"] == ("Good" if spec.vq >= 2 / 3 else "Normal" if spec.vq >= 1 / 3 else "Bad")
        assert row["MQ"] == ("Good" if spec.mq >= 2 / 3 else "Normal" if spec.mq >= 1 / 3 else "Bad")
        assert row["TA"] == ("Good", "Normal", "Bad", "Bad")[spec.ta]
        prompt_attrs = tuple(row["prompt"].split()[i] for i in (1, 2, 4))
        shown = (spec.color, spec.shape, spec.direction)
        assert sr.reason_check(row["reason_TA"], prompt_attrs, shown)
        assert (row["gt_ta"] == 0) == row["reason_TA"].endswith("as the prompt says.")


def test_synth_reason_by_hand_and_its_check():
    reason = sr.ta_reason(("red", "circle", "left"), ("green", "square", "up"))
    assert (
        reason == "It is a square, not a circle, and the square is green, not red, and the square moves up, not left."
    )
    assert sr.reason_claims(reason) == {
        "shape": ("square", "circle"),
        "color": ("green", "red"),
        "direction": ("up", "left"),
    }
    assert sr.reason_check("the circle is blue , not red .", ("red", "circle", "left"), ("blue", "circle", "left"))
    # wrong value shown, a missing claim, an extra claim: all fail
    assert not sr.reason_check("the circle is green, not red.", ("red", "circle", "left"), ("blue", "circle", "left"))
    assert not sr.reason_check("the circle is blue, not red.", ("red", "circle", "left"), ("blue", "circle", "up"))
    assert not sr.reason_check(
        "the circle is blue, not red, and moves up, not left.", ("red", "circle", "left"), ("blue", "circle", "left")
    )
    assert sr.reason_check("It is a red circle moving left.", ("red", "circle", "left"), ("red", "circle", "left"))
    # the looser reading: at least one wrong attribute named right, no false claim; a partial answer passes
    p, s = ("red", "circle", "left"), ("blue", "square", "left")
    assert sr.reason_names_some("the circle is blue, not red.", p, s) and not sr.reason_check(
        "the circle is blue, not red.", p, s
    )
    assert sr.reason_names_some("It is a square, not a circle, and the square is blue, not red.", p, s)
    assert not sr.reason_names_some("the circle is green, not red.", p, s)  # wrong value shown
    assert not sr.reason_names_some("the circle is blue, not red, and moves up, not left.", p, s)  # a false claim
    assert not sr.reason_names_some("It is a red circle moving left.", p, s)  # names nothing


def test_rating_noise_flips_the_expected_share_and_keeps_the_truth(tmp_path):
    cfg = SynthConfig(pairs=300, seed=3, frames=4, size="16x16", rating_noise=0.3)
    rows = sr.pointwise_ratings(_fake_manifest(cfg), cfg.rating_noise, cfg.seed).to_pylist()
    flipped = np.mean([r[d] != r[f"gt_rating_{d}"] for r in rows for d in ("VQ", "MQ", "TA")])
    assert abs(flipped - 0.3) < 0.03  # 1800 draws: sd 0.011
    clean = sr.pointwise_ratings(_fake_manifest(cfg), 0.0, cfg.seed).to_pylist()
    assert all(r[d] == r[f"gt_rating_{d}"] for r in clean for d in ("VQ", "MQ", "TA"))
    assert [r["reason_TA"] for r in rows] == [r["reason_TA"] for r in clean]  # reasons kept under noise


def _fake_manifest(cfg: SynthConfig) -> pa.Table:
    """The manifest columns pointwise_ratings reads, from the label draws alone (nothing rendered)."""
    rows = []
    for i in range(cfg.pairs):
        p = sample_pair(cfg, i)
        row = {"prompt": p.prompt}
        for side, spec in (("A", p.a), ("B", p.b)):
            row |= {
                f"path_{side}": f"{i}{side}.mp4",
                f"gt_vq_{side}": spec.vq,
                f"gt_mq_{side}": spec.mq,
                f"gt_ta_{side}": spec.ta,
                f"gt_color_{side}": spec.color,
                f"gt_shape_{side}": spec.shape,
                f"gt_direction_{side}": spec.direction,
            }
        rows.append(row)
    return pa.Table.from_pylist(rows)
