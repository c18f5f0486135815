"""raypipe relabel: label rules by hand, batching plans, every input kind end to end on Ray (scores against direct
model scoring), every bad-input kind as an error row, and a driver killed mid-run then resumed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv  # noqa: F401 - pa.csv
import pyarrow.parquet as pq
import pytest

from raypipe.config import ConfigError, SamplingConfig, SynthConfig
from raypipe.data.inputs import resolve_input
from raypipe.data.location import output_location
from raypipe.data.manifest import ManifestError
from raypipe.recipes.relabel import PROGRESS_DIR, RelabelConfig
from raypipe.recipes.relabel import run as run_relabel
from raypipe.reward.model import VideoReward
from raypipe.reward.relabel import PartWriter, model_labels, parse_tie_epsilon, scan, write_parts
from raypipe.reward.scoring import TIE_EPSILON_FILE, VideoIndex, distinct_videos, plan_batches, video_tokens
from raypipe.video.decode import decode_video
from raypipe.video.synth import make_synthpref

DIMS = ["VQ", "MQ", "TA"]
# The tiny sampling, with a source-size cap small enough that a 112x112 clip counts as absurdly large.
SAMPLING = SamplingConfig(fps=4.0, max_frames=16, max_source_pixels=100 * 100)
EPS = {"VQ": 0.05, "MQ": -1.0, "TA": 0.02, "Overall": 0.1}


# --- pure pieces ---------------------------------------------------------------------------------------------
def test_model_labels_by_hand():
    m = np.array([0.3, -0.3, 0.1, -0.1, 0.0, np.nan, 0.1000001])
    assert model_labels(m, 0.1).to_pylist() == ["A", "B", "same", "same", "same", None, "A"]
    # ε = -1 (no tie threshold): only exactly equal scores are "same".
    assert model_labels(m, -1.0).to_pylist() == ["A", "B", "A", "B", "same", None, "A"]
    assert model_labels(np.array([1e-12, -1e-12]), 0.0).to_pylist() == ["A", "B"]


def _pairs_table(n: int, seed: int = 0) -> pa.Table:
    """n pair rows over few videos, with repeats across rows and sides."""
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "path_A": [f"v{int(i)}.mp4" for i in rng.integers(0, 6, n)],
            "path_B": [f"v{int(i)}.mp4" for i in rng.integers(0, 6, n)],
            "prompt": [f"p{int(i)}" for i in rng.integers(0, 3, n)],
            "VQ": ["A"] * n,
        }
    )


def test_video_index_numbers_videos_row_by_row_whatever_the_batches():
    table = _pairs_table(40)
    # brute force: first meeting, row by row, side A before side B
    want: dict = {}
    for row in table.to_pylist():
        for side in ("A", "B"):
            want.setdefault((row[f"path_{side}"], row["prompt"]), len(want))
    for size in (1, 3, 7, 40):
        index = VideoIndex()
        ids = [index.ids(table.slice(i, size), ["path_A", "path_B"]) for i in range(0, 40, size)]
        got = index.table().to_pylist()
        assert [(r["uri"], r["prompt"]) for r in got] == list(want)
        assert [r["video_id"] for r in got] == list(range(len(want)))
        for side in ("A", "B"):
            per_row = np.concatenate([i[f"path_{side}"] for i in ids])
            expect = [want[(r[f"path_{side}"], r["prompt"])] for r in table.to_pylist()]
            assert per_row.tolist() == expect


def test_input_is_walked_in_batches_with_one_fingerprint(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(_pairs_table(10), path)
    walks = {size: resolve_input(str(path), batch_rows=size) for size in (1, 3, 100)}
    assert [b.num_rows for b in walks[3].batches()] == [3, 3, 3, 1]
    assert walks[3].table.column("row_id").to_pylist() == list(range(10))
    prints = {size: scan(inp)[2] for size, inp in walks.items()}
    assert len(set(prints.values())) == 1
    index, rows, _ = scan(walks[3])
    assert rows == 10 and len(index) == len(distinct_videos(walks[100].table, ["uri_A", "uri_B"])[0])
    changed = _pairs_table(10).to_pylist()
    changed[9]["prompt"] += "!"
    pq.write_table(pa.Table.from_pylist(changed), path)
    assert scan(resolve_input(str(path), batch_rows=3))[2] != prints[3]


def test_a_bad_row_is_named_by_its_place_in_the_whole_file(tmp_path):
    path = tmp_path / "pairs.csv"
    rows = _pairs_table(10).to_pylist()
    rows[7]["path_B"] = " "
    pa.csv.write_csv(pa.Table.from_pylist(rows), path)
    inp = resolve_input(str(path), batch_rows=3)  # CSV batches are blocks of the file; the row is counted all the same
    with pytest.raises(ManifestError, match="column 'path_B', row 7: is an empty string"):
        scan(inp)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    with pytest.raises(ManifestError, match="row 7"):
        scan(resolve_input(str(tmp_path / "pairs.parquet"), batch_rows=3))


def test_part_writer_cuts_rows_into_whole_parts_in_order(tmp_path):
    out = output_location(str(tmp_path / "out"))
    out.write_parquet("part-00009.parquet", pa.table({"row_id": [99]}))  # an earlier run's part: removed
    writer = PartWriter(out, 4)
    start = 0
    for size in (3, 5, 1, 7):
        writer.append(pa.table({"row_id": list(range(start, start + size))}))
        start += size
    names = writer.close()
    assert names == [f"part-{k:05d}.parquet" for k in range(4)] == out.names("part-*.parquet")
    parts = [out.read_parquet(n).column("row_id").to_pylist() for n in names]
    assert parts == [list(range(k, k + 4)) for k in range(0, 16, 4)]
    assert write_parts(pa.table({"row_id": list(range(5))}), out, 100) == ["part-00000.parquet"]


def test_parse_tie_epsilon():
    assert parse_tie_epsilon(None, DIMS) is None
    assert parse_tie_epsilon(0.25, DIMS) == {"VQ": 0.25, "MQ": 0.25, "TA": 0.25, "Overall": 0.25}
    assert parse_tie_epsilon("{VQ: 0.1, TA: 2}", DIMS) == {"VQ": 0.1, "TA": 2.0}
    with pytest.raises(ConfigError, match="unknown dimensions"):
        parse_tie_epsilon("{XX: 1}", DIMS)
    with pytest.raises(ConfigError, match="number"):
        parse_tie_epsilon("{VQ: high}", DIMS)


def test_plan_batches_by_count_and_budget():
    assert plan_batches([1] * 5, max_items=2) == [[0, 1], [2, 3], [4]]
    assert plan_batches([4, 4, 4, 10, 1, 1], max_items=8, budget=9) == [[0, 1], [2], [3], [4, 5]]
    assert plan_batches([20], max_items=4, budget=5) == [[0]]  # too big alone: its own pass, never dropped
    assert plan_batches([], max_items=4, budget=5) == []
    costs = list(np.random.default_rng(0).integers(1, 30, 200))
    groups = plan_batches(costs, max_items=6, budget=50)
    assert sum(groups, []) == list(range(200))  # every item once, in order
    assert all(len(g) <= 6 and (sum(costs[i] for i in g) <= 50 or len(g) == 1) for g in groups)


def test_video_tokens():
    assert video_tokens(np.zeros((8, 56, 56, 3))) == 4 * 2 * 2
    assert video_tokens(np.zeros((7, 448, 252, 3))) == 4 * 16 * 9


# --- data ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(reward_checkpoint, tmp_path_factory):
    """The session's tiny checkpoint, copied, with tie thresholds stored as eval-reward would."""
    path = tmp_path_factory.mktemp("relabel_ckpt") / "final"
    shutil.copytree(reward_checkpoint, path)
    (path / TIE_EPSILON_FILE).write_text(json.dumps(EPS))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 SynthPref pairs, then one extra pair per bad-input kind (each bad video on side B of a good A)."""
    from raypipe.video.encode import write_mp4
    from tests.conftest import moving_square_frames

    root = tmp_path_factory.mktemp("relabel_data")
    table = make_synthpref(root, SynthConfig(pairs=8, seed=5))
    good = (root / table.column("path_A")[0].as_py()).read_bytes()
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "notes.mp4").write_text("this is text, not a video")
    (bad / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (bad / "codec.mp4").write_bytes(good.replace(b"avc1", b"zzz1"))
    write_mp4(moving_square_frames(16, 112, 112), bad / "huge.mp4", 8.0)
    kinds = {
        "bad/gone.mp4": "missing",
        "bad/empty.mp4": "empty",
        "bad/notes.mp4": "not_a_video",
        "bad/truncated.mp4": "corrupt",
        "bad/codec.mp4": "unsupported_codec",
        "bad/huge.mp4": "too_large",
    }
    rows = table.to_pylist()
    base = rows[0]
    rows += [{**base, "path_B": path} for path in kinds]
    rows.append({**rows[1], "VQ": "garbled"})  # a duplicate pair, one label not understood: still scored
    pairs = pa.Table.from_pylist(rows, schema=table.schema)
    pq.write_table(pairs, root / "pairs.parquet")
    return {"root": root, "pairs": str(root / "pairs.parquet"), "kinds": kinds, "n_good": 8}


def _read(out) -> pa.Table:
    table = pq.read_table(out)  # the folder as a Parquet dataset: _progress is ignored
    return table.sort_by("row_id")


def _direct_scores(checkpoint, uris, prompts):
    model = VideoReward.from_pretrained(checkpoint)
    frames = [decode_video(u, SAMPLING).frames for u in uris]
    return model.score(frames, prompts).numpy()


# --- end to end ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def relabeled(ray_local, checkpoint, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("relabel_out")
    cfg = RelabelConfig(
        reward=checkpoint,
        input=data["pairs"],
        out=str(out),
        sampling=SAMPLING,
        batch=3,
        token_budget=40,
        progress=False,
    )
    return run_relabel(cfg), out


def test_pairs_every_row_once_with_scores_margins_and_labels(relabeled, checkpoint, data):
    summary, out = relabeled
    table = _read(out)
    source = pq.read_table(data["pairs"])
    assert table.num_rows == source.num_rows == summary["rows"]
    assert table.column("row_id").to_pylist() == list(range(source.num_rows))
    for col in source.column_names:  # the input columns, unchanged, beside the model's
        assert table.column(col).to_pylist() == source.column(col).to_pylist()
    ok = table.filter(pa.compute.is_null(table.column("error")))
    assert ok.num_rows == data["n_good"] + 1
    a = _direct_scores(checkpoint, ok.column("uri_A").to_pylist(), ok.column("prompt").to_pylist())
    b = _direct_scores(checkpoint, ok.column("uri_B").to_pylist(), ok.column("prompt").to_pylist())
    for j, d in enumerate(DIMS):
        np.testing.assert_allclose(ok.column(f"score_A_{d}").to_numpy(), a[:, j], atol=1e-4)
        np.testing.assert_allclose(ok.column(f"score_B_{d}").to_numpy(), b[:, j], atol=1e-4)
        margin = ok.column(f"margin_{d}").to_numpy()
        np.testing.assert_allclose(margin, a[:, j] - b[:, j], atol=1e-4)
        expect = ["same" if abs(m) <= EPS[d] or m == 0 else ("A" if m > 0 else "B") for m in margin]
        assert ok.column(f"model_{d}").to_pylist() == expect
    assert set(ok.column("model_Overall").to_pylist()) <= {"A", "B", "same"}
    # The checkpoint's thresholds were used, and are reported.
    assert summary["tie_epsilon"] == EPS


def test_every_bad_input_kind_is_an_error_row(relabeled, data):
    summary, out = relabeled
    table = _read(out)
    bad = table.filter(pa.compute.is_valid(table.column("error")))
    got = dict(zip(bad.column("path_B").to_pylist(), bad.column("error").to_pylist()))
    assert got == data["kinds"]
    for row in bad.to_pylist():  # the good side is still scored; nothing derived from the bad one
        assert row["score_A_VQ"] is not None and row["score_B_VQ"] is None
        assert row["margin_VQ"] is None and row["model_VQ"] is None
        assert row["error_message"].startswith("B: ")
    assert summary["rows_with_error"] == {k: 1 for k in data["kinds"].values()}
    assert summary["rows_ok"] == data["n_good"] + 1
    # Each distinct video once: 8 pairs -> 16 videos, + 6 bad ones; the duplicate pair adds none.
    assert summary["videos"] == 16 + 6 == summary["videos_scored_this_run"]
    assert summary["video_errors"] == {k: 1 for k in data["kinds"].values()}


def test_folder_with_sidecar_glob_and_pointwise(ray_local, checkpoint, data, tmp_path):
    root = data["root"]
    videos = sorted((root / "videos").glob("*.mp4"))
    sidecar = tmp_path / "prompts.csv"
    pq_rows = pq.read_table(data["pairs"]).slice(0, data["n_good"]).to_pylist()
    prompt_of = {os.path.basename(r["path_A"]): r["prompt"] for r in pq_rows}
    prompt_of.update({os.path.basename(r["path_B"]): r["prompt"] for r in pq_rows})
    sidecar.write_text("path,prompt\n" + "".join(f"{n},{p}\n" for n, p in prompt_of.items()))
    out = tmp_path / "folder"
    summary = run_relabel(
        RelabelConfig(
            reward=checkpoint,
            input=str(root / "videos"),
            out=str(out),
            prompts=str(sidecar),
            sampling=SAMPLING,
            progress=False,
        )
    )
    table = _read(out)
    assert table.column("path").to_pylist() == [str(v) for v in videos]  # sorted listing = row order
    assert table.column("prompt").to_pylist() == [prompt_of[v.name] for v in videos]
    assert summary["kind"] == "videos" and summary["rows_ok"] == len(videos)
    direct = _direct_scores(checkpoint, [str(v) for v in videos[:3]], [prompt_of[v.name] for v in videos[:3]])
    np.testing.assert_allclose(
        np.stack([table.column(f"score_{d}").to_numpy()[:3] for d in DIMS], 1), direct, atol=1e-4
    )
    stats = json.loads(open(os.path.join(checkpoint, "norm_stats.json")).read())
    norm = np.stack([(table.column(f"score_{d}").to_numpy() - stats["mean"][d]) / stats["std"][d] for d in DIMS], 1)
    for j, d in enumerate(DIMS):
        np.testing.assert_allclose(table.column(f"norm_{d}").to_numpy(), norm[:, j], atol=1e-9)
    np.testing.assert_allclose(table.column("Overall").to_numpy(), norm.sum(1), atol=1e-9)

    # A glob over the bad folder: every match is a row, non-videos as errors; no sidecar -> empty prompts.
    summary = run_relabel(
        RelabelConfig(
            reward=checkpoint, input=str(root / "bad" / "*"), out=str(tmp_path / "g"), sampling=SAMPLING, progress=False
        )
    )
    assert summary["rows"] == 5 and summary["rows_ok"] == 0
    assert sorted(summary["rows_with_error"]) == ["corrupt", "empty", "not_a_video", "too_large", "unsupported_codec"]
    assert set(_read(tmp_path / "g").column("prompt").to_pylist()) == {""}

    # A pointwise manifest (path, prompt, a rating column that stays as it was).
    pointwise = tmp_path / "points.csv"
    pointwise.write_text(
        "path,prompt,VQ\n" + f"{videos[0]},{prompt_of[videos[0].name]},Good\n" + f"{root / 'bad' / 'gone.mp4'},x,Bad\n"
    )
    summary = run_relabel(
        RelabelConfig(
            reward=checkpoint, input=str(pointwise), out=str(tmp_path / "p"), sampling=SAMPLING, progress=False
        )
    )
    table = _read(tmp_path / "p")
    assert table.column("VQ").to_pylist() == ["Good", "Bad"]
    assert table.column("error").to_pylist() == [None, "missing"]
    assert table.column("score_VQ").to_pylist()[1] is None
    np.testing.assert_allclose(
        table.column("score_VQ").to_numpy()[0], direct[list(videos).index(videos[0]), 0], atol=1e-4
    )


def test_bad_arguments_fail_before_ray(checkpoint, data, tmp_path, monkeypatch):
    def no_ray(*args, **kwargs):
        raise AssertionError("Ray work started for bad input")

    monkeypatch.setattr("raypipe.recipes.relabel.init_ray", no_ray)
    with pytest.raises(ConfigError, match="does not exist"):
        run_relabel(RelabelConfig(reward=checkpoint, input=str(tmp_path / "nothing"), out=str(tmp_path / "o")))
    with pytest.raises(ConfigError, match="not a VideoReward checkpoint"):
        run_relabel(RelabelConfig(reward=str(tmp_path), input=data["pairs"], out=str(tmp_path / "o")))
    with pytest.raises(ConfigError, match="unknown dimensions"):
        run_relabel(
            RelabelConfig(reward=checkpoint, input=data["pairs"], out=str(tmp_path / "o"), tie_epsilon={"Style": 0.1})
        )
    with pytest.raises(ConfigError, match="no video files"):
        run_relabel(RelabelConfig(reward=checkpoint, input=str(tmp_path), out=str(tmp_path / "o")))


def test_sidecar_matching(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.mp4", "y.mp4", "z.webm", "readme.txt"):
        (tmp_path / name).write_bytes(b"0")
    (tmp_path / "prompts.csv").write_text(
        f"path,prompt\na/x.mp4,first\n{tmp_path / 'y.mp4'},second\nz.webm,third\nelsewhere.mp4,unused\n"
    )
    inp = resolve_input(str(tmp_path), DIMS)
    assert inp.table.column("prompt").to_pylist() == ["first", "second", "third"]
    assert any("1 sidecar rows matched no video" in n for n in inp.notes)
    assert any("2 files" in n for n in inp.notes)  # readme.txt and prompts.csv are not listed


# --- resume --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_driver_killed_mid_run_resumes_to_the_same_output(ray_local, checkpoint, data, relabeled, tmp_path):
    """SIGKILL the driver once some results are on disk; the rerun skips them and the output equals the
    uninterrupted run's, each row exactly once."""
    _, reference = relabeled
    out = tmp_path / "resumed"
    address = ray_local.get_runtime_context().gcs_address
    sampling = json.dumps(SAMPLING.__dict__)
    args = [
        sys.executable,
        "-m",
        "raypipe.cli",
        "relabel",
        f"reward={checkpoint}",
        f"input={data['pairs']}",
        "--out",
        str(out),
        "batch=1",
        "token_budget=40",
        f"address={address}",
        f"sampling={sampling}",
        "decode_rows=1",
        "flush_every_s=0",
        "progress=false",
    ]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": os.getcwd()}
    )
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / PROGRESS_DIR).glob("videos-*.parquet"))) < 2:
        assert proc.poll() is None, "relabel finished before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(out.glob("part-*.parquet")), "killed before the output was assembled"
    done_before = sum(pq.read_metadata(p).num_rows for p in (out / PROGRESS_DIR).glob("videos-*.parquet"))
    assert 0 < done_before < 22

    # The rerun walks the input in batches of 4 rows and writes parts of 5: the video numbering and the input's
    # fingerprint do not depend on batch sizes, so it resumes all the same.
    cfg = RelabelConfig(
        reward=checkpoint,
        input=data["pairs"],
        out=str(out),
        sampling=SAMPLING,
        batch=1,
        progress=False,
        read_rows=4,
        rows_per_part=5,
    )
    summary = run_relabel(cfg)
    assert summary["parts"] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert summary["resumes"] == 1
    assert summary["videos_from_previous_runs"] == done_before
    assert summary["videos_scored_this_run"] == 22 - done_before
    got, want = _read(out), _read(reference)
    assert got.column_names == want.column_names
    for col in got.column_names:
        g, w = got.column(col).to_pylist(), want.column(col).to_pylist()
        if col.startswith(("score_", "margin_", "overall_")):
            np.testing.assert_allclose(np.array(g, dtype=float), np.array(w, dtype=float), atol=1e-4)
        elif not col.startswith("model_"):  # labels can flip only for margins within float noise of ε
            assert g == w, col
    # Run again: nothing left to score, same output.
    again = run_relabel(cfg)
    assert again["videos_scored_this_run"] == 0 and again["resumes"] == 2
    assert _read(out).num_rows == want.num_rows

    # Same OUT, different input: refused rather than mixed.
    other = tmp_path / "other.parquet"
    pq.write_table(pq.read_table(data["pairs"]).slice(0, 3), other)
    with pytest.raises(ConfigError, match="different relabel run"):
        run_relabel(RelabelConfig(reward=checkpoint, input=str(other), out=str(out), progress=False))


def test_a_parquet_dataset_folder_is_read_in_file_order(tmp_path):
    """A manifest written as a folder of parts (Spark's `x.parquet/part-*`) is walked part by part in name order,
    the same rows `pq.read_table` gives."""
    folder = tmp_path / "pairs.parquet"
    folder.mkdir()
    for i in range(3):
        part = _pairs_table(4, seed=i)
        pq.write_table(part, folder / f"part-{i:05d}.parquet")
    inp = resolve_input(str(folder), batch_rows=5)
    got = inp.table
    want = pq.read_table(folder)
    assert got.column("row_id").to_pylist() == list(range(12))
    assert got.column("path_A").to_pylist() == want.column("path_A").to_pylist()
    assert got.column("uri_A")[0].as_py() == str(tmp_path / got.column("path_A")[0].as_py())
