"""The VideoGen-RewardBench leaderboard: a benchmark-format CSV (A_model/B_model, ties, equal margins, a masked
label, a failed video, a null model name) through the manifest loader, eval-reward's pair table and metrics, and
the leaderboard text, against loops written here. No Ray: scores are given per video."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest

from raypipe.data.manifest import load_manifest
from raypipe.recipes.eval_reward import compute_metrics, pair_scores
from raypipe.reward.leaderboard import by_model_reports, leaderboard_markdown
from raypipe.reward.scoring import distinct_videos
from tests.test_reward_metrics import brute_force, official_transcription

DIMS = ["VQ", "MQ", "TA"]
NORM = {"mean": {"VQ": 0.5, "MQ": -1.0, "TA": 0.0}, "std": {"VQ": 2.0, "MQ": 1.0, "TA": 1.0}}  # exact in binary
LABEL = {"A": 1, "B": -1, "same": 0}
# A_model, B_model | VQ label, A, B | MQ label, A, B | TA label, A, B | Overall label
ROWS = [
    ("gen1", "gen2", "A", 3, 1, "same", 2, 2, "same", 1, 0, "A"),
    ("gen2", "gen3", "B", 1, 3, "A", 3, 1, "same", -1, 0, "same"),
    ("gen1", "gen3", "A", 2, 2, "B", 1, 2, "A", 3, 0, "A"),
    ("gen3", "gen1", "same", 4, 2, "A", 2, 1, "A", 2, 0, "B"),
    ("gen2", "gen2", "B", 0, 2, "same", 1, 1, "B", -1, 0, "B"),  # one generator on both sides: counted once
    ("gen4", "gen1", "A", 1, 3, "", 0, 1, "same", 0, 0, "same"),  # MQ unlabelled: masked
    ("gen2", "gen4", "same", 2, 2, "A", 1, 0, "A", -2, 0, "A"),
    ("gen3", "", "B", 3, 1, "B", 2, 1, "B", 1, 0, "B"),  # B_model null: this pair counts for gen3 only
    ("gen1", "gen4", "A", 1, 0, "A", 1, 0, "A", 1, 0, "A"),  # B's video fails to decode: left out everywhere
]
FAILED = "8_B.mp4"


def _write_csv(path) -> None:
    header = ["path_A", "path_B", "A_model", "B_model", "prompt", "fps_A", "num_frames_A", "fps_B", "num_frames_B"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header + [*DIMS, "Overall"])
        for i, r in enumerate(ROWS):
            w.writerow(
                [f"v/{i}_A.mp4", f"v/{i}_B.mp4", r[0], r[1], f"prompt {i}", 8, 16, 8, 16, r[2], r[5], r[8], r[11]]
            )


def _video_scores() -> dict[str, list[float]]:
    out = {}
    for i, r in enumerate(ROWS):
        out[f"{i}_A.mp4"] = [float(r[3]), float(r[6]), float(r[9])]
        out[f"{i}_B.mp4"] = [float(r[4]), float(r[7]), float(r[10])]
    return out


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """(metrics, scores table) the way eval-reward computes them, scores given per video instead of a model."""
    path = tmp_path_factory.mktemp("bench") / "videogen-rewardbench.csv"
    _write_csv(path)
    manifest = load_manifest(str(path), DIMS)
    videos, ids = distinct_videos(manifest.table, ["uri_A", "uri_B"])
    given = _video_scores()
    scored = {}
    for vid, uri in zip(videos.column("video_id").to_pylist(), videos.column("uri").to_pylist()):
        name = os.path.basename(uri)
        failed = name == FAILED
        scored[vid] = ([None] * 3 if failed else given[name], "missing" if failed else None, "gone" if failed else None)
    scores = pair_scores(manifest, ids, scored, DIMS, NORM)
    metrics, _ = compute_metrics(scores, DIMS, n_scored_videos=len(scored))
    return json.loads(json.dumps(metrics)), scores


def _by_loops() -> dict[str, dict[str | None, tuple[list, list]]]:
    """{dim: {None (all) or model: (h, m)}} straight from ROWS, in row order."""
    out: dict = {d: {None: ([], [])} for d in [*DIMS, "Overall"]}
    for r in ROWS[:-1]:  # the last row's B video failed
        margins = {d: r[3 + 3 * j] - r[4 + 3 * j] for j, d in enumerate(DIMS)}
        margins["Overall"] = sum(
            (r[3 + 3 * j] - NORM["mean"][d]) / NORM["std"][d] - (r[4 + 3 * j] - NORM["mean"][d]) / NORM["std"][d]
            for j, d in enumerate(DIMS)
        )
        labels = {d: r[2 + 3 * j] for j, d in enumerate(DIMS)} | {"Overall": r[11]}
        for d in out:
            if labels[d] not in LABEL:
                continue
            for key in {None, r[0], r[1]} - {""}:
                h, m = out[d].setdefault(key, ([], []))
                h.append(LABEL[labels[d]])
                m.append(margins[d])
    return out


def _cells(text: str, first: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(f"| {first} "))
    return [c.strip() for c in line.strip("|").split("|")]


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def test_model_columns_survive_into_scores(bench):
    _, scores = bench
    assert scores.column("A_model").to_pylist() == [r[0] for r in ROWS]
    assert scores.column("B_model").to_pylist() == [r[1] or None for r in ROWS]  # "" reads as null


def test_hand_worked_ta_official_above_exact(bench):
    metrics, _ = bench
    ta = metrics["TA"]
    # TA over rows 0-7 (h, m): (0, 1) (0, -1) (1, 3) (1, 2) (-1, -1) (0, 0) (1, -2) (-1, 1); N = 8.
    # w/o ties: decisive rows 2, 3, 4, 6, 7; right 2, 3, 4 -> 3/5.
    # exact: ε=-1: 3 right; ε=0: + row 5 -> 4; ε=1 (rows 0, 1, 4, 7 together): +1 +1 -1 +0 -> 5; ε=2: rows 3, 6
    #   -> 4; ε=3: 3.  max 5/8 = 62.50 % at ε* = 1.
    # official: |m| stable order 5 | 0 1 4 7 | 3 6 | 2, one pair at a time from 3: 4 5 6 5 5 4 4 3 -> 6/8 = 75.00 %
    #   (after rows 0 and 1 but before rows 4 and 7, all |m| = 1: a split no threshold makes).
    assert (ta["acc_without_ties"], ta["acc_with_ties"], ta["epsilon"], ta["n"], ta["n_ties"]) == (0.6, 0.625, 1, 8, 3)
    assert ta["official"] == {"accuracy_with_ties": 0.75, "accuracy_without_ties": 0.6}
    text = leaderboard_markdown(metrics)
    assert _cells(text, "TA") == ["TA", "60.00", "62.50", "60.00", "75.00", "8"]


def test_leaderboard_equals_loops(bench):
    metrics, _ = bench
    loops = _by_loops()
    text = leaderboard_markdown(metrics)
    header = _cells(text, "dimension")
    assert header == ["dimension", "w/o ties", "w/ ties", "official w/o ties", "official w/ ties", "n pairs"]
    rows = [x.split("|")[1].strip() for x in text.split("## By generator")[0].splitlines()[4:8]]
    assert rows == ["Overall", "VQ", "MQ", "TA"]
    for dim, groups in loops.items():
        for model, (h, m) in groups.items():
            r = metrics[dim] if model is None else metrics[dim]["by_model"][model]
            _, _, best, best_eps = brute_force(h, m)
            decisive = [(hi, mi) for hi, mi in zip(h, m) if hi != 0]
            without = sum((mi > 0) - (mi < 0) == hi for hi, mi in decisive) / len(decisive) if decisive else None
            official_with, official_without = official_transcription(h, m)
            assert (r["acc_with_ties"], r["epsilon"], r["n"]) == (best, best_eps, len(h)), (dim, model)
            assert r["acc_without_ties"] == without, (dim, model)
            assert r["official"]["accuracy_with_ties"] == official_with, (dim, model)
            assert _pct(r["official"]["accuracy_without_ties"]) == _pct(official_without), (dim, model)
            if model is None:
                want = [dim, _pct(without), _pct(best), _pct(official_without), _pct(official_with), str(len(h))]
                assert _cells(text, dim) == want
        assert sorted(metrics[dim]["by_model"]) == sorted(k for k in groups if k is not None)
    assert set(metrics["TA"]["by_model"]) == {"gen1", "gen2", "gen3", "gen4"}
    assert metrics["MQ"]["n"] == 7 and metrics["VQ"]["by_model"]["gen4"]["n"] == 2  # masked MQ; null B_model


def test_per_model_table(bench):
    metrics, _ = bench
    text = leaderboard_markdown(metrics)
    header = _cells(text, "model")
    assert header == ["model", "n pairs"] + [f"{d} {w}" for d in ["Overall", *DIMS] for w in ("w/o", "w/")]
    for model in ("gen1", "gen2", "gen3", "gen4"):
        want = [model, str(metrics["Overall"]["by_model"][model]["n"])]
        for d in ["Overall", *DIMS]:
            r = metrics[d]["by_model"][model]
            want += [_pct(r["acc_without_ties"]), _pct(r["acc_with_ties"])]
        assert _cells(text, model) == want
    # gen4 in VQ: rows 5 (A, m = -2) and 6 (same, m = 0): w/o ties 0/1; exact ε=0: row 6 a tie -> 1/2
    assert _cells(text, "gen4")[4:6] == ["0.00", "50.00"]


def test_official_off(bench):
    _, scores = bench
    metrics, _ = compute_metrics(scores, DIMS, n_scored_videos=17, official=False)
    assert all("official" not in metrics[d] for d in [*DIMS, "Overall"])
    assert all("official" not in r for r in metrics["TA"]["by_model"].values())
    text = leaderboard_markdown(metrics, official=False)
    assert _cells(text, "dimension") == ["dimension", "w/o ties", "w/ ties", "n pairs"] and "official" not in text


def test_no_model_columns_no_per_model_table(bench):
    _, scores = bench
    metrics, _ = compute_metrics(scores.drop_columns(["A_model", "B_model"]), DIMS, n_scored_videos=17)
    assert all("by_model" not in metrics[d] for d in [*DIMS, "Overall"])
    assert "By generator" not in leaderboard_markdown(metrics)


def test_by_model_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="equal length"):
        by_model_reports([1, -1], [0.5, 0.2], ["a"], ["b", "c"])
