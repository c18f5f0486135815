"""Reward scoring and eval-reward: normalisation by hand, the Ray scoring path against direct scoring,
row accounting with bad videos, dedup of shared videos, metrics against an independent computation."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raypipe.config import ConfigError, SamplingConfig, SynthConfig, load_config
from raypipe.data.manifest import ManifestError, normalize_label
from raypipe.recipes import eval_reward as eval_job
from raypipe.recipes.eval_reward import EvalConfig, compute_metrics
from raypipe.recipes.eval_reward import run as run_eval
from raypipe.reward.leaderboard import leaderboard_markdown
from raypipe.reward.metrics import official_report, pairwise_report
from raypipe.reward.model import VideoReward
from raypipe.reward.scoring import compute_norm_stats, normalize, overall, resolve_sampling, validate_norm_stats
from raypipe.video.decode import decode_video
from raypipe.video.synth import make_synthpref

DIMS = ["VQ", "MQ", "TA"]
TINY_SAMPLING = SamplingConfig(fps=4.0, max_frames=16)  # the tiny presets' sampling (8 of 16 frames)


# --- normalisation -------------------------------------------------------------------------------------------
def test_norm_stats_normalize_overall_by_hand():
    scores = np.array([[1.0, 10.0, 5.0], [3.0, 10.0, 7.0], [np.nan, np.nan, np.nan]])
    stats = compute_norm_stats(scores, DIMS)
    assert stats == {"mean": {"VQ": 2.0, "MQ": 10.0, "TA": 6.0}, "std": {"VQ": 1.0, "MQ": 1e-6, "TA": 1.0}}
    z = normalize(np.array([[4.0, 10.0, 5.0]]), stats, DIMS)
    np.testing.assert_allclose(z, [[2.0, 0.0, -1.0]])
    np.testing.assert_allclose(overall(z), [1.0])
    assert json.loads(json.dumps(stats)) == stats  # the checkpoint file round-trips


def test_norm_stats_validation():
    good = {"mean": {d: 0.0 for d in DIMS}, "std": {d: 1.0 for d in DIMS}}
    assert validate_norm_stats(good, DIMS) is good
    with pytest.raises(ValueError, match="TA"):
        validate_norm_stats({"mean": {"VQ": 0, "MQ": 0}, "std": good["std"]}, DIMS)
    with pytest.raises(ValueError, match="> 0"):
        validate_norm_stats({"mean": good["mean"], "std": {**good["std"], "MQ": 0.0}}, DIMS)
    with pytest.raises(ValueError):
        validate_norm_stats({"mean": [0, 0, 0], "std": [1, 1, 1]}, DIMS)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        compute_norm_stats(np.zeros((4, 2)), DIMS)


# --- end to end on Ray ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(reward_checkpoint):
    """The session's tiny saved reward model (norm stats, tiny sampling recorded beside it)."""
    return reward_checkpoint


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """6 SynthPref pairs + a missing file, a text file, and a pair reusing pair 0's A video with its prompt."""
    root = tmp_path_factory.mktemp("synth")
    table = make_synthpref(root, SynthConfig(pairs=6, seed=3))
    (root / "notes.mp4").write_text("not a video at all")
    rows = table.to_pylist()
    rows.append({**rows[1], "path_B": "videos/gone.mp4"})
    rows.append({**rows[2], "path_A": "notes.mp4"})
    rows.append({**rows[3], "path_A": rows[0]["path_A"], "prompt": rows[0]["prompt"], "MQ": "garbled"})
    out = pa.Table.from_pylist(rows, schema=table.schema)
    out = out.append_column("Overall", pa.array([r["VQ"] for r in rows], pa.string()))
    out = out.append_column("A_model", pa.array([f"gen{i % 3}" for i in range(len(rows))], pa.string()))
    out = out.append_column("B_model", pa.array([f"gen{(i + 1) % 3}" for i in range(len(rows))], pa.string()))
    pq.write_table(out, root / "manifest.parquet")
    return str(root / "manifest.parquet")


@pytest.fixture(scope="module")
def evaluated(ray_local, checkpoint, manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    cfg = EvalConfig(reward=checkpoint, manifest=manifest, out=str(out), batch=4, progress=False)
    return run_eval(cfg), out


def test_every_row_once_with_error_kinds(evaluated, manifest):
    metrics, out = evaluated
    scores = pq.read_table(out / "scores.parquet")
    assert scores.column("row_id").to_pylist() == list(range(9))  # every row exactly once, in order
    assert scores.column("error").to_pylist() == [None] * 6 + ["missing", "not_a_video", None]
    assert scores.column("error_message")[6].as_py().startswith("B: missing")
    assert scores.column("score_A_VQ")[7].as_py() is None and scores.column("score_B_VQ")[7].as_py() is not None
    assert metrics["errors"] == {"missing": 1, "not_a_video": 1} and metrics["n_rows"] == 9
    # 12 videos of the 6 pairs + 3 new (gone.mp4, notes.mp4, pair 3's B): pair 8's A is pair 0's, scored once
    assert metrics["n_scored_videos"] == 15
    assert scores.column("score_A_TA")[8].as_py() == scores.column("score_A_TA")[0].as_py()
    for name in ("gt_vq_A", "y_VQ", "uri_A", "Overall", "A_model", "B_model"):  # input and derived columns travel along
        assert name in scores.column_names


def test_ray_scores_equal_direct_scoring(evaluated, checkpoint):
    _, out = evaluated
    scores = pq.read_table(out / "scores.parquet").to_pylist()
    model = VideoReward.from_pretrained(checkpoint)
    frames, prompts, expected = [], [], []
    for row in scores[:6]:
        for side in ("A", "B"):
            frames.append(decode_video(row[f"uri_{side}"], TINY_SAMPLING).frames)
            prompts.append(row["prompt"])
            expected.append([row[f"score_{side}_{d}"] for d in DIMS])
    direct = model.score(frames, prompts).numpy()
    np.testing.assert_allclose(np.array(expected), direct, atol=1e-5, rtol=1e-5)
    for row in scores[:6]:
        for d in DIMS:
            assert row[f"margin_{d}"] == pytest.approx(row[f"score_A_{d}"] - row[f"score_B_{d}"])
        stats = model.norm_stats
        o = [sum((row[f"score_{s}_{d}"] - stats["mean"][d]) / stats["std"][d] for d in DIMS) for s in "AB"]
        assert row["margin_Overall"] == pytest.approx(o[0] - o[1])


def test_metrics_match_independent_computation(evaluated):
    metrics, out = evaluated
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics
    assert set(saved) == {*DIMS, "Overall", "errors", "n_rows", "n_scored_videos"}
    scores = pq.read_table(out / "scores.parquet").to_pylist()
    for name in (*DIMS, "Overall"):
        rows = [r for r in scores if r["error"] is None and normalize_label(r[name]) is not None]
        h = [normalize_label(r[name]) for r in rows]
        m = [r[f"margin_{name}"] for r in rows]
        report = dict(saved[name])
        official, by_model = report.pop("official"), report.pop("by_model")
        assert report == pairwise_report(h, m), name
        assert official == eval_job._nan_to_none(official_report(h, m)), name
        assert sorted(by_model) == ["gen0", "gen1", "gen2"]
        for model, got in by_model.items():
            sub = [i for i, r in enumerate(rows) if model in (r["A_model"], r["B_model"])]
            hs, ms = [h[i] for i in sub], [m[i] for i in sub]
            want = pairwise_report(hs, ms) | {"official": official_report(hs, ms)}
            assert got == eval_job._nan_to_none(want), (name, model)
    assert (out / "leaderboard.md").read_text() == leaderboard_markdown(saved)
    assert saved["MQ"]["n"] == 6 and saved["VQ"]["n"] == 7  # the garbled MQ label is masked
    png = out / "accuracy_vs_epsilon.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    resolved = load_config(EvalConfig, out / "config.yaml")
    assert resolved.sampling == TINY_SAMPLING  # read from the checkpoint's sampling.json


def test_overall_omitted_without_norm_stats(evaluated):
    _, out = evaluated
    scores = pq.read_table(out / "scores.parquet")
    scores = scores.drop_columns(["overall_A", "overall_B", "margin_Overall"])
    metrics, _ = compute_metrics(scores, DIMS, n_scored_videos=15)
    assert "Overall" not in metrics and "norm_stats" in metrics["notes"][0]


def test_sampling_rule(checkpoint, tmp_path):
    assert resolve_sampling(checkpoint, None)[0] == TINY_SAMPLING
    override = SamplingConfig(fps=1.0)
    assert resolve_sampling(checkpoint, override) == (override, "config")
    assert resolve_sampling(str(tmp_path), None) == (SamplingConfig(), "default")


def test_bad_input_fails_before_ray(checkpoint, manifest, tmp_path, monkeypatch):
    def no_ray(*args, **kwargs):
        raise AssertionError("Ray work started for bad input")

    monkeypatch.setattr("raypipe.recipes.eval_reward.init_ray", no_ray)
    monkeypatch.setattr(eval_job, "score_videos", no_ray)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pq.read_table(manifest).drop_columns(["prompt"]), bad)
    with pytest.raises(ManifestError, match="prompt"):
        run_eval(EvalConfig(reward=checkpoint, manifest=str(bad), out=str(tmp_path / "o"), progress=False))
    with pytest.raises(ConfigError, match="not a VideoReward checkpoint"):
        run_eval(EvalConfig(reward=str(tmp_path), manifest=manifest, out=str(tmp_path / "o"), progress=False))
    assert not (tmp_path / "o").exists()
