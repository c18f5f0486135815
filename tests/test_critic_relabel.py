"""`raypipe relabel --critic`: the same Ray Data actor pool as VideoReward relabelling, rating every row once with
ratings, reasons and lift_weight; bad videos and unparsable answers as error rows; killed and rerun -> every row
once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raypipe.config import ConfigError, SynthConfig
from raypipe.recipes.relabel import PROGRESS_DIR, RelabelConfig
from raypipe.recipes.relabel import run as run_relabel
from raypipe.video.synth import make_synthpref
from tests.conftest import CRITIC_ANSWERS

WEIGHT = (0.9 + 0.05 + 0.2) / 3  # Good, Bad, Normal: the fixture critic's answers


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 SynthPref pairs and one pair whose B video is not a video."""
    root = tmp_path_factory.mktemp("critic_relabel")
    table = make_synthpref(root, SynthConfig(pairs=4, seed=8))
    (root / "notes.mp4").write_text("not a video")
    rows = table.to_pylist()
    rows.append({**rows[0], "path_B": "notes.mp4"})
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), root / "pairs.parquet")
    return {"root": root, "pairs": str(root / "pairs.parquet"), "ratings": str(root / "ratings.parquet")}


def _read(out) -> pa.Table:
    return pq.read_table(out).sort_by("row_id")


def test_critic_relabel_pairs_and_pointwise(ray_local, critic_checkpoint, data, tmp_path):
    summary = run_relabel(
        RelabelConfig(critic=critic_checkpoint, input=data["pairs"], out=str(tmp_path / "p"), progress=False)
    )
    assert summary["model"] == "critic" and summary["rows"] == 5 and summary["rows_ok"] == 4
    assert summary["rows_with_error"] == {"not_a_video": 1}
    table = _read(tmp_path / "p")
    assert table.column("row_id").to_pylist() == list(range(5))
    for side in "AB":
        for dim, answer in CRITIC_ANSWERS.items():
            rating, reason = answer.split(". ", 1)
            got = table.column(f"rating_{side}_{dim}").to_pylist()
            assert got[:4] == [rating] * 4
            assert table.column(f"reason_{side}_{dim}").to_pylist()[0].replace(" ", "") == reason.lower().replace(
                " ", ""
            )
    assert table.column("lift_weight_A").to_pylist() == pytest.approx([WEIGHT] * 5)
    assert table.column("lift_weight_B").to_pylist()[:4] == pytest.approx([WEIGHT] * 4)
    assert table.column("lift_weight_B").to_pylist()[4] is None and table.column("rating_B_VQ").to_pylist()[4] is None
    assert table.column("error").to_pylist() == [None] * 4 + ["not_a_video"]
    # pointwise (SynthPref's ratings.parquet: 8 videos) with a custom weight map
    summary = run_relabel(
        RelabelConfig(
            critic=critic_checkpoint,
            input=data["ratings"],
            out=str(tmp_path / "v"),
            progress=False,
            weight_map={"Good": 1.0, "Normal": 0.5, "Bad": 0.0},
        )
    )
    table = _read(tmp_path / "v")
    assert summary["rows"] == table.num_rows == 8 and summary["videos_scored_this_run"] == 8
    assert table.column("lift_weight").to_pylist() == pytest.approx([0.5] * 8)
    assert table.column("rating_TA").to_pylist() == ["Normal"] * 8
    assert "VQ" in table.column_names  # the human ratings stay beside the critic's, their reasons renamed
    assert table.column("input_reason_MQ").to_pylist() == pq.read_table(data["ratings"]).column("reason_MQ").to_pylist()


def test_unparsable_answers_are_error_rows(ray_local, data, tmp_path):
    from raypipe.critic.model import Critic, CriticModelConfig

    untrained = Critic.build(CriticModelConfig(name_or_path="assets/tiny-qwen2vl", max_new_tokens=4))
    untrained.save_pretrained(tmp_path / "untrained")
    summary = run_relabel(
        RelabelConfig(
            critic=str(tmp_path / "untrained"), input=data["ratings"], out=str(tmp_path / "o"), progress=False
        )
    )
    table = _read(tmp_path / "o")
    assert summary["rows_with_error"] == {"unparsable_answer": 8} and summary["rows_ok"] == 0
    assert all("does not start with Good, Normal or Bad" in m for m in table.column("error_message").to_pylist())
    assert table.column("lift_weight").null_count == 8  # never a silent default weight


def test_critic_relabel_refusals(critic_checkpoint, data, tmp_path):
    with pytest.raises(ConfigError, match="one of reward / critic"):
        run_relabel(RelabelConfig(critic=critic_checkpoint, reward="x", input=data["pairs"], out=str(tmp_path)))
    with pytest.raises(ConfigError, match="not a critic checkpoint"):
        run_relabel(RelabelConfig(critic=str(tmp_path), input=data["pairs"], out=str(tmp_path)))
    with pytest.raises(ConfigError, match="weight map"):
        run_relabel(
            RelabelConfig(critic=critic_checkpoint, input=data["pairs"], out=str(tmp_path), weight_map={"Good": 1})
        )


@pytest.mark.slow
def test_critic_relabel_killed_and_rerun_gives_every_row_once(ray_local, critic_checkpoint, data, tmp_path):
    out = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "raypipe.cli",
        "relabel",
        "--critic",
        critic_checkpoint,
        f"input={data['pairs']}",
        "--out",
        str(out),
        "batch=1",
        "decode_rows=1",
        "flush_every_s=0",
        "progress=false",
        f"address={ray_local.get_runtime_context().gcs_address}",
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
    assert not list(out.glob("part-*.parquet"))
    done = sum(pq.read_metadata(p).num_rows for p in (out / PROGRESS_DIR).glob("videos-*.parquet"))
    assert 0 < done < 9  # 9 distinct videos (4 pairs + the bad one)
    summary = run_relabel(RelabelConfig(critic=critic_checkpoint, input=data["pairs"], out=str(out), progress=False))
    assert summary["resumes"] == 1 and summary["videos_from_previous_runs"] == done
    assert summary["videos_scored_this_run"] == 9 - done
    table = _read(out)
    assert table.column("row_id").to_pylist() == list(range(5))
    assert table.column("rating_A_MQ").to_pylist() == ["Bad"] * 5
