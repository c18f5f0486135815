"""Object storage through a real S3-protocol server on loopback (moto, the `s3` fixture): the output location
(`raypipe.data.location`) on S3 and on local disk alike, and `raypipe relabel` with its manifest, videos and
output all on S3 — every row once, the same scores as the local run, resumed from the state it keeps there."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch

from raypipe.config import ConfigError, SamplingConfig, SynthConfig
from raypipe.data.location import Location, LocationError
from raypipe.recipes.relabel import PROGRESS_DIR, RelabelConfig
from raypipe.recipes.relabel import run as run_relabel
from raypipe.video.synth import make_synthpref

SAMPLING = SamplingConfig(fps=4.0, max_frames=16)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_location_reads_back_what_it_writes(where, s3, tmp_path):
    out = Location(s3("loc") if where == "s3" else str(tmp_path / "loc")).mkdir()
    assert out.names() == [] and not out.exists("a.txt")
    out.write_text("a.txt", "héllo")
    table = pa.table({"x": [1, 2, 3]})
    out.write_parquet("part-00001.parquet", table)
    out.write_parquet("part-00000.parquet", table.slice(0, 1))
    assert out.read_text("a.txt") == "héllo" and out.exists("a.txt")
    assert out.names("part-*.parquet") == ["part-00000.parquet", "part-00001.parquet"]  # sorted, glob-filtered
    assert (
        out.read_parquet("part-00001.parquet", columns=["x"]).equals(table)
        and out.parquet_rows("part-00000.parquet") == 1
    )
    sub = out.child("_progress").mkdir()
    sub.write_text("state.json", "{}")
    assert out.names() == ["a.txt", "part-00000.parquet", "part-00001.parquet"]  # a sub-folder is not a file
    assert sub.names() == ["state.json"] and sub.uri_of("state.json").endswith("/_progress/state.json")
    out.delete("a.txt")
    assert not out.exists("a.txt") and out.names("*.txt") == []
    if where == "local":
        assert not [p for p in (tmp_path / "loc").iterdir() if p.name.startswith(".tmp")]  # no temporary left
    else:
        assert str(out).startswith("s3://raypipe-test/loc-") and not (tmp_path / "s3:").exists()


def test_location_errors_are_one_line(s3):
    with pytest.raises(LocationError, match=r"s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist"):
        Location("s3://no-such-bucket/x").mkdir()
    with pytest.raises(LocationError) as err:
        Location("s3://no-such-bucket/x").write_text("a.txt", "x")
    assert "s3://no-such-bucket/x/a.txt" in str(err.value) and "\n" not in str(err.value)
    assert "Request ID" not in str(err.value)
    with pytest.raises(LocationError, match="no output location"):
        Location("  ")


def _upload(local_dir, uri: str) -> None:
    fs, path = pafs.FileSystem.from_uri(uri)
    pafs.copy_files(str(local_dir), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


@pytest.fixture(scope="module")
def synth_on_s3(s3, tmp_path_factory):
    """Six SynthPref pairs on local disk and the same folder uploaded to S3 (the manifest's relative paths then
    resolve inside the bucket)."""
    root = tmp_path_factory.mktemp("synth_s3")
    make_synthpref(root, SynthConfig(pairs=6, seed=9, frames=8, size="28x28"))
    prefix = s3("synth")
    _upload(root, prefix)
    return root, prefix


def test_relabel_reads_and_writes_s3_and_resumes_there(ray_local, reward_checkpoint, synth_on_s3, s3, tmp_path):
    root, prefix = synth_on_s3
    common = dict(reward=reward_checkpoint, sampling=SAMPLING, batch=4, progress=False)
    local = run_relabel(RelabelConfig(input=str(root / "manifest.parquet"), out=str(tmp_path / "local"), **common))
    out = s3("relabeled")
    summary = run_relabel(RelabelConfig(input=f"{prefix}/manifest.parquet", out=out, **common))
    assert not (tmp_path / "s3:").exists()
    loc = Location(out)
    assert loc.names() == ["_config.yaml", "_summary.json", "part-00000.parquet"]
    assert json.loads(loc.read_text("_summary.json"))["rows"] == summary["rows"] == 6 == local["rows"]
    got = loc.read_parquet("part-00000.parquet").sort_by("row_id")
    want = pq.read_table(tmp_path / "local").sort_by("row_id")
    assert got.column("row_id").to_pylist() == list(range(6)) and got.column("error").null_count == 6
    assert all(u.startswith(f"{prefix}/videos/") for u in got.column("uri_A").to_pylist())  # read from S3
    for d in ("VQ", "MQ", "TA"):
        np.testing.assert_allclose(
            got.column(f"score_A_{d}").to_numpy(), want.column(f"score_A_{d}").to_numpy(), atol=1e-5
        )
        assert got.column(f"model_{d}").to_pylist() == want.column(f"model_{d}").to_pylist()

    # resume from the state on S3: drop the outputs and one progress shard, as a kill before the end would
    progress = loc.child(PROGRESS_DIR)
    shards = progress.names("videos-*.parquet")
    kept = sum(progress.parquet_rows(s) for s in shards[:-1])
    lost = progress.parquet_rows(shards[-1])
    for name in ("part-00000.parquet", "_summary.json"):
        loc.delete(name)
    progress.delete(shards[-1])
    progress.write_text("videos-000099.parquet", "PAR1 cut mid-write")  # a torn shard: set aside, scored again
    again = run_relabel(RelabelConfig(input=f"{prefix}/manifest.parquet", out=out, **common))
    assert again["videos_from_previous_runs"] == kept and again["videos_scored_this_run"] == lost == 12 - kept
    assert again["resumes"] == 1 and any("videos-000099.parquet" in n for n in again["notes"])
    assert loc.read_parquet("part-00000.parquet").sort_by("row_id").equals(got)  # the same rows, once each

    with pytest.raises(ConfigError, match="out: s3://no-such-bucket/r: bucket 'no-such-bucket' does not exist"):
        run_relabel(RelabelConfig(input=f"{prefix}/manifest.parquet", out="s3://no-such-bucket/r", **common))


def test_pairs_and_eval_reward_write_to_s3(ray_local, reward_checkpoint, synth_on_s3, s3, tmp_path):
    from raypipe.recipes.eval_reward import EvalConfig
    from raypipe.recipes.eval_reward import run as run_eval
    from raypipe.recipes.pairs import PairsJobConfig
    from raypipe.recipes.pairs import run as run_pairs_job

    root, prefix = synth_on_s3
    cfg = PairsJobConfig(out=s3("pairs"), progress=False)
    cfg.data.manifest = f"{prefix}/manifest.parquet"
    summary = run_pairs_job(cfg)
    loc = Location(cfg.out)
    assert loc.names() == ["config.yaml", "decoded.parquet", "errors.parquet", "summary.json"]
    assert summary["decoded"] == 6 and loc.parquet_rows("decoded.parquet") == 6
    assert loc.parquet_rows("errors.parquet") == 0  # no bad videos: the file is there with its schema
    assert summary["outputs"]["decoded"] == f"{cfg.out}/decoded.parquet"

    out = s3("eval")
    metrics = run_eval(
        EvalConfig(
            reward=reward_checkpoint, manifest=f"{prefix}/manifest.parquet", out=out, sampling=SAMPLING, progress=False
        )
    )
    loc = Location(out)
    assert {"scores.parquet", "metrics.json", "accuracy_vs_epsilon.png", "config.yaml"} <= set(loc.names())
    assert json.loads(loc.read_text("metrics.json"))["n_rows"] == metrics["n_rows"] == 6
    assert loc.read_parquet("scores.parquet").num_rows == 6
    local = run_eval(
        EvalConfig(
            reward=reward_checkpoint,
            manifest=str(root / "manifest.parquet"),
            out=str(tmp_path / "eval"),
            sampling=SAMPLING,
            progress=False,
        )
    )
    assert local["VQ"]["acc_with_ties"] == metrics["VQ"]["acc_with_ties"]
    with pytest.raises(ConfigError, match="out: s3://no-such-bucket/p: bucket"):
        run_pairs_job(PairsJobConfig(out="s3://no-such-bucket/p", data=cfg.data, progress=False))


@pytest.mark.slow
def test_train_reward_to_s3_resumes_from_the_store_on_a_fresh_machine(ray_local, s3, tmp_path, monkeypatch):
    """--out s3://…, with ZeRO-3: checkpoints live in the store (Ray Train's storage), the outputs are published
    there at the end. The newest checkpoint is then cut mid-write (every object halved) and a rerun with an empty local
    staging folder (another machine) resumes from the one before it, says which it skipped, and trains on."""
    from raypipe.config import load_config
    from raypipe.recipes.train_reward import RewardTrainConfig
    from raypipe.recipes.train_reward import run as run_train_reward
    from raypipe.reward.model import VideoReward
    from tests.test_train_reward import TINY

    out = s3("reward")
    monkeypatch.setenv("RAYPIPE_STAGING", str(tmp_path / "machine-1"))
    common = [*TINY, f"out={out}", "train.checkpoint_every=1", "train.eval_every=2", "train.max_failures=0"]
    common += ["train.keep_checkpoints=3", "train.zero_stage=3"]  # ZeRO-3: sharded checkpoints, gathered final
    first = run_train_reward(load_config(RewardTrainConfig, "configs/reward_tiny.yaml", [*common, "train.max_steps=2"]))
    assert first["steps"] == 2 and first["final_checkpoint"] == f"{out}/final"
    loc = Location(out)
    assert {"summary.json", "learning_curve.json", "learning_curve.png", "config.yaml"} <= set(loc.names())
    assert loc.child("final").exists("reward_config.json")
    runs = loc.child("ray_results").child("train-reward")
    ckpts = sorted(n for n in _dirs(runs) if n.startswith("checkpoint_"))
    assert len(ckpts) == 2, ckpts  # steps 1 and 2, in the store
    torn = runs.child(ckpts[-1])
    for info in torn.fs.get_file_info(pafs.FileSelector(torn.root, recursive=True)):
        if info.type == pafs.FileType.File:
            with torn.fs.open_input_stream(info.path) as f:
                data = f.read()
            with torn.fs.open_output_stream(info.path) as f:
                f.write(data[: len(data) // 2])

    monkeypatch.setenv("RAYPIPE_STAGING", str(tmp_path / "machine-2"))  # nothing local: only the store
    again = run_train_reward(load_config(RewardTrainConfig, "configs/reward_tiny.yaml", [*common, "train.max_steps=3"]))
    assert again["steps"] == 3
    assert [(r["at_step"], r.get("skipped")) for r in again["resumes"]] == [(1, [ckpts[-1]])]
    assert json.loads(loc.read_text("summary.json"))["steps"] == 3
    local = tmp_path / "final"
    fs, path = pafs.FileSystem.from_uri(f"{out}/final")
    pafs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    model = VideoReward.from_pretrained(local)  # what was published loads: ZeRO-3's shards gathered, LoRA merged
    lora_merged = model.backbone.model.language_model.layers[0].self_attn.q_proj.weight
    assert lora_merged.numel() > 0 and torch.isfinite(lora_merged).all()  # not size-0 shards


def _dirs(loc: Location) -> list[str]:
    infos = loc.fs.get_file_info(pafs.FileSelector(loc.root, allow_not_found=True))
    return [i.base_name for i in infos if i.type == pafs.FileType.Directory]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs mounted for the test (root only; skipped where mounting is not allowed)."""
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_relabel_on_a_full_disk_stops_with_one_line_and_resumes(ray_local, reward_checkpoint, synth_on_s3, small_disk):
    """OUT on a disk with 20 KiB left: relabel stops with a LocationError naming the file (the CLI prints it as
    one line), keeps only whole progress shards, and after space is freed the same command resumes and writes
    every row once."""
    import os

    root, _ = synth_on_s3
    out = small_disk / "relabeled"
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * (free - 20 * 1024))
    cfg = RelabelConfig(
        reward=reward_checkpoint,
        input=str(root / "manifest.parquet"),
        out=str(out),
        sampling=SAMPLING,
        batch=1,
        decode_rows=1,
        flush_every_s=0.0,
        progress=False,
    )
    with pytest.raises(LocationError, match="no space left on the device") as err:
        run_relabel(cfg)
    assert "\n" not in str(err.value) and str(out) in str(err.value)
    progress = Location(str(out)).child(PROGRESS_DIR)
    shards = progress.names("videos-*.parquet")
    kept = sum(progress.parquet_rows(s) for s in shards)  # every shard left is whole (it reads)
    assert 0 < kept < 12  # it stopped mid-run: some videos were in, some not
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp")]  # no half-written file left behind
    filler.unlink()
    summary = run_relabel(cfg)
    assert summary["videos_from_previous_runs"] == kept and summary["videos_scored_this_run"] == 12 - kept
    table = pq.read_table(out).sort_by("row_id")
    assert table.column("row_id").to_pylist() == list(range(6)) and table.column("error").null_count == 6


@pytest.fixture(scope="module")
def s3_checking_keys(tmp_path_factory):
    """A second S3-protocol server on loopback that checks credentials (moto with INITIAL_NO_AUTH_ACTION_COUNT=0:
    every request must be signed by a key it knows; ours are unknown to it). Yields the environment a user with
    a wrong key would have."""
    import os
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.time() < deadline and server.poll() is None, "the credential-checking server did not start"
            time.sleep(0.1)
    yield {**os.environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    server.terminate()
    server.wait()


def test_a_refused_key_is_one_clear_line_from_every_door(s3_checking_keys, reward_checkpoint, tmp_path):
    """As a user with a wrong key runs them: relabel reading its manifest from the store, and writing its output
    there; train-reward's checkpoints there. Each exits 2 before any Ray work with one line that says the
    credentials were refused — no traceback."""
    import subprocess
    import sys

    local = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path_A": ["a.mp4"], "path_B": ["b.mp4"], "prompt": ["p"]}), local)
    runs = {
        "manifest on the store": ["relabel", f"reward={reward_checkpoint}", "input=s3://raypipe-test/m.parquet"],
        "relabel out on the store": ["relabel", f"reward={reward_checkpoint}", f"input={local}"],
        "train-reward out on the store": ["train-reward", "--config", "configs/reward_tiny.yaml"],
    }
    for what, args in runs.items():
        proc = subprocess.run(
            [sys.executable, "-m", "raypipe.cli", *args, "--out", "s3://raypipe-test/out"],
            env=s3_checking_keys,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        assert proc.returncode == 2, (what, proc.stderr[-2000:])
        assert len(lines) == 1 and "Traceback" not in proc.stderr, (what, proc.stderr[-2000:])
        assert "refused the credentials" in lines[0] and "s3://raypipe-test/" in lines[0], (what, lines[0])


def test_every_other_job_writes_to_s3_or_says_why_not(s3, reward_checkpoint, tmp_path, monkeypatch):
    """export-reward (like eval-flow and generate) stages its folder and publishes it to the store; the jobs whose
    outputs name files by local path (sample-pairs, pretrain-generator, the demo) refuse an object-store OUT with
    one line instead of writing a local folder named `s3:`."""
    from raypipe.recipes.demo import DemoConfig
    from raypipe.recipes.demo import run as run_demo
    from raypipe.recipes.export_reward import ExportConfig
    from raypipe.recipes.export_reward import run as run_export
    from raypipe.recipes.sample_pairs import SamplePairsConfig
    from raypipe.recipes.sample_pairs import run as run_sample_pairs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAYPIPE_STAGING", str(tmp_path / "staging"))
    out = s3("export")
    summary = run_export(ExportConfig(reward=reward_checkpoint, format="raypipe", out=out))
    assert summary["out"] == out and Location(out).exists("reward_config.json") and Location(out).exists("config.yaml")
    with pytest.raises(ConfigError, match="object-store URI; this job writes a local folder"):
        run_sample_pairs(SamplePairsConfig(generator="g", reward=reward_checkpoint, out=s3("pairs")))
    with pytest.raises(ConfigError, match="object-store URI"):
        run_demo(DemoConfig(out=s3("demo")))
    assert not (tmp_path / "s3:").exists()
