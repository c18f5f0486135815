"""Pair building by linear scalarisation (SPEC §5), hand-worked; generator clips of fixed shape."""

import numpy as np
import pyarrow as pa
import pytest

from raypipe.config import ClipConfig
from raypipe.flow.pairs import generator_clip, pairs_from_labels, pairs_from_margins
from raypipe.video.decode import VideoError


def _labelled():
    # y: +1 A, -1 B, 0 tie, None unlabelled
    return pa.table(
        {
            "row_id": pa.array([0, 1, 2, 3, 4], pa.int64()),
            "uri_A": ["a0", "a1", "a2", "a3", "a4"],
            "uri_B": ["b0", "b1", "b2", "b3", "b4"],
            "prompt": ["p0", "p1", "p2", "p3", "p4"],
            "y_VQ": pa.array([1, -1, 1, 0, None], pa.int8()),
            "y_MQ": pa.array([1, 1, -1, 0, 1], pa.int8()),
        }
    )


def test_pairs_from_labels_by_hand():
    pairs, counts = pairs_from_labels(_labelled(), {"VQ": 1.0})
    assert pairs.column("row_id").to_pylist() == [0, 1, 2]
    assert pairs.column("uri_w").to_pylist() == ["a0", "b1", "a2"]
    assert pairs.column("uri_l").to_pylist() == ["b0", "a1", "b2"]
    assert counts == {
        "rows": 5,
        "pairs": 3,
        "a_wins": 2,
        "b_wins": 1,
        "dropped_tie": 1,
        "dropped_unlabelled_or_error": 1,
    }
    # VQ + 2·MQ: row0 3 (A), row1 1 (A), row2 -1 (B), row3 0 (tie), row4 unlabelled on VQ.
    pairs, counts = pairs_from_labels(_labelled(), {"VQ": 1.0, "MQ": 2.0})
    assert pairs.column("uri_w").to_pylist() == ["a0", "a1", "b2"]
    assert pairs.column("r").to_pylist() == [3.0, 1.0, 1.0]
    # A zero weight ignores that dimension, missing label included.
    pairs, _ = pairs_from_labels(_labelled(), {"VQ": 0.0, "MQ": 1.0})
    assert pairs.column("row_id").to_pylist() == [0, 1, 2, 4]
    with pytest.raises(ValueError):
        pairs_from_labels(_labelled(), {"VQ": 0.0})
    with pytest.raises(KeyError, match="TA"):
        pairs_from_labels(_labelled(), {"TA": 1.0})


def test_pairs_from_margins_with_errors_and_min_margin():
    t = pa.table(
        {
            "row_id": pa.array([0, 1, 2, 3], pa.int64()),
            "uri_A": ["a0", "a1", "a2", "a3"],
            "uri_B": ["b0", "b1", "b2", "b3"],
            "prompt": ["p"] * 4,
            "margin_VQ": [0.5, -0.05, None, -2.0],
            "margin_MQ": [-0.1, 0.0, 1.0, 0.5],
            "error": [None, None, "missing", None],
        }
    )
    pairs, counts = pairs_from_margins(t, {"VQ": 1.0, "MQ": 1.0}, min_margin=0.1)
    assert pairs.column("uri_w").to_pylist() == ["a0", "b3"]
    np.testing.assert_allclose(pairs.column("r").to_numpy(), [0.4, 1.5])
    assert counts["dropped_tie"] == 1 and counts["dropped_unlabelled_or_error"] == 1


def test_generator_clip_shape_and_errors(make_mp4, tmp_path):
    clip = generator_clip(make_mp4("c.mp4", t=16), ClipConfig(frames=9, height=32, width=40))
    assert clip.shape == (9, 32, 40, 3) and clip.dtype == np.uint8
    short = generator_clip(make_mp4("s.mp4", t=4), ClipConfig(frames=9))
    assert isinstance(short, VideoError) and short.kind == "too_short"
    assert generator_clip(str(tmp_path / "none.mp4"), ClipConfig()).kind == "missing"


def test_generator_clip_keeps_odd_frame_counts(tmp_path):
    """A 9-frame clip (the tiny generator's own samples) gives its 9 frames: reading every frame must not go
    through the reward model's even frame-count rounding."""
    from raypipe.config import ClipConfig
    from raypipe.flow.pairs import generator_clip
    from raypipe.video.encode import write_mp4
    from tests.conftest import moving_square_frames

    write_mp4(moving_square_frames(9, 32, 32), tmp_path / "nine.mp4", 8.0)
    clip = generator_clip(str(tmp_path / "nine.mp4"), ClipConfig(frames=9, height=32, width=32))
    assert clip.shape == (9, 32, 32, 3)
