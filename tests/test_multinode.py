"""Multi-node, for real: a Ray cluster of three nodes on this machine (`ray.cluster_utils.Cluster`: a head with no
CPUs and two 2-CPU worker nodes, each its own raylet and object store). Drivers connect to it from subprocesses (the
test process itself stays on the session's local Ray).

- reward training with its two DeepSpeed workers on different nodes (STRICT_SPREAD); one worker process SIGKILLed
  after the first checkpoint -> resumed from it, optimizer/LR/data position restored, the expected step count;
- relabel submitted through `JobSubmissionClient` with cluster/runtime_env.yaml (working_dir upload, jobs/ entrypoint),
  scoring actors on both worker nodes; one worker node removed mid-run -> the job still finishes with every row
  exactly once.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import TINY_SAMPLING_FIELDS, kill_a_train_worker_after_first_checkpoint

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """Head (0 CPUs: drivers, controllers, the dashboard for job submission) + two 2-CPU worker nodes.

    Every node gets its own dashboard-agent port (the default one is taken by the session's local Ray). The head
    writes /tmp/ray/ray_current_cluster like `ray start --head` does; the previous content is put back afterwards
    so later `ray.init()` calls do not find a dead cluster."""
    from ray.cluster_utils import Cluster

    marker = Path("/tmp/ray/ray_current_cluster")
    saved = marker.read_text() if marker.exists() else None
    small = 160 * 1024 * 1024
    c = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": 0,
            "object_store_memory": small,
            "include_dashboard": True,
            "dashboard_port": _free_port(),
            "dashboard_agent_listen_port": _free_port(),
        },
    )
    workers = [
        c.add_node(num_cpus=2, object_store_memory=small, dashboard_agent_listen_port=_free_port()) for _ in range(2)
    ]
    c.wait_for_nodes()
    try:
        yield {
            "cluster": c,
            "address": c.address,
            "head": c.head_node.node_id,
            "dashboard": "http://" + c.head_node.address_info["webui_url"],
            "workers": workers,
        }
    finally:
        c.shutdown()
        if saved is None:
            marker.unlink(missing_ok=True)
        else:
            marker.write_text(saved)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}


# --- (a) + fault 1: training spread over nodes, a worker killed ----------------------------------------------
TINY_REWARD = [
    "synth_train.pairs=24",
    "synth_val.pairs=16",
    "train.batch=2",
    "train.epochs=2",
    "train.checkpoint_every=4",
    "train.eval_every=4",
    "train.cpus_per_worker=1",
    "progress=false",
    "data.rows_per_block=4",
    "train.record_rows=true",
    "train.lr=1e-3",
    "train.max_failures=1",
    "train.placement_strategy=STRICT_SPREAD",
    "data.sampling.min_pixels=3136",
]


def test_reward_training_on_two_nodes_survives_a_killed_worker(cluster, tmp_path):
    from raypipe.reward.model import VideoReward

    out = tmp_path / "run"
    args = [
        sys.executable,
        str(REPO / "jobs" / "train_reward.py"),
        "--config",
        str(REPO / "configs" / "reward_tiny.yaml"),
        "--out",
        str(out),
        f"address={cluster['address']}",
        *TINY_REWARD,
    ]
    killed: list = []
    killer = threading.Thread(
        target=kill_a_train_worker_after_first_checkpoint, args=(out / "ray_results" / "train-reward", killed, 600)
    )
    killer.start()
    proc = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=900, cwd=REPO)
    killer.join()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert killed, "the test never managed to kill a worker"
    summary = json.loads((out / "summary.json").read_text())

    # Both workers ran, on the two worker nodes (not the CPU-less head, not sharing a node), also after the restart.
    nodes = [w["node_id"] for w in summary["worker_nodes"]]
    assert len(nodes) == 2 and len(set(nodes)) == 2, nodes
    assert set(nodes) == {w.node_id for w in cluster["workers"]}

    steps = 2 * (24 // 2 // 2)  # epochs x (pairs per worker / batch)
    assert summary["steps"] == steps
    assert len(summary["resumes"]) == 1
    resume = summary["resumes"][0]
    assert resume["at_step"] >= 4 and resume["at_step"] % 4 == 0
    assert resume["engine_global_steps"] == resume["at_step"]  # optimizer + LR schedule state restored
    curve = json.loads((out / "learning_curve.json").read_text())
    at = next(p for p in curve if p["step"] == resume["at_step"])
    assert resume["lr"] == pytest.approx(at["lr"])
    ckpts = sorted(p for p in (out / "ray_results" / "train-reward").glob("checkpoint_*") if p.is_dir())
    rows_by_epoch = json.loads((ckpts[-1] / "progress.json").read_text())["rows"]
    for epoch, rows in rows_by_epoch.items():  # data position: nothing consumed twice, nothing skipped
        assert len(rows) == len(set(rows)) == 24 // 2, (epoch, sorted(rows))
    model = VideoReward.from_pretrained(out / "final")  # loads without Ray, with SPEC 3.3 norm stats
    assert set(model.norm_stats["mean"]) == {"VQ", "MQ", "TA"}


# --- (b) + (c) + fault 2: relabel as a submitted job, spread over nodes, a node lost ------------------------
@pytest.fixture(scope="module")
def relabel_input(tmp_path_factory):
    """40 SynthPref pairs: 80 videos."""
    from raypipe.config import SynthConfig
    from raypipe.video.synth import make_synthpref

    root = tmp_path_factory.mktemp("mn-data")
    make_synthpref(root, SynthConfig(pairs=40, seed=5, frames=16, size="56x56"), progress=False)
    return root / "manifest.parquet"


def _submit(client, entrypoint: str, runtime_env: dict) -> str:
    deadline = time.time() + 120
    while True:  # the head's dashboard agent registers a few seconds after the node is up
        try:
            return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.time() > deadline:
                raise
            time.sleep(1)


def test_relabel_job_spread_over_nodes_survives_a_lost_node(cluster, reward_checkpoint, relabel_input, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    out = tmp_path / "relabel"
    runtime_env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    runtime_env["working_dir"] = str(REPO)  # what `ray job submit --working-dir .` does from the repo root
    runtime_env["env_vars"]["OMP_NUM_THREADS"] = "1"
    entry = " ".join(
        [
            sys.executable,
            "jobs/relabel.py",
            f"reward={reward_checkpoint}",
            f"input={relabel_input}",
            "--out",
            str(out),
            "concurrency=2",
            "batch=2",
            f"'sampling={json.dumps(TINY_SAMPLING_FIELDS)}'",
            "decode_rows=2",
            "flush_every_s=0",
            "actor_cpus=0.5",
            "decode_cpus=0.5",
            "progress=false",
        ]
    )
    client = JobSubmissionClient(cluster["dashboard"])
    job = _submit(client, entry, runtime_env)

    # Once a quarter of the videos are on disk and both worker nodes' actors have delivered some (the progress
    # shards say where each video was scored), take one worker node away: its raylet, object store and every
    # worker process on it.
    def progress() -> tuple[int, set]:
        shards = list((out / "_progress").glob("videos-*.parquet"))
        nodes = set()
        for p in shards:
            nodes.update(pq.read_table(p, columns=["scored_on"]).column("scored_on").to_pylist())
        return sum(pq.read_metadata(p).num_rows for p in shards), nodes

    def done() -> int:
        return progress()[0]

    deadline = time.time() + 300
    while time.time() < deadline and (lambda n, nodes: n < 20 or len(nodes) < 2)(*progress()):
        assert client.get_job_status(job) in (JobStatus.PENDING, JobStatus.RUNNING), client.get_job_logs(job)[-3000:]
        time.sleep(0.1)
    assert len(progress()[1]) == 2, f"both worker nodes had not scored within 300 s: {progress()}"
    lost = cluster["workers"][1]
    cluster["cluster"].remove_node(lost, allow_graceful=False)
    assert done() < 80, "the node was lost after the work was done"
    removed_at = time.time()
    while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        if time.time() > removed_at + 240:
            client.stop_job(job)
            pytest.fail("relabel job did not finish after the node loss:\n" + client.get_job_logs(job)[-6000:])
        time.sleep(0.5)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-4000:]

    summary = json.loads((out / "_summary.json").read_text())
    assert summary["complete"] and summary["rows"] == 40 and summary["videos"] == 80
    assert summary["videos_scored_this_run"] == 80
    by_node = summary["videos_by_node"]
    assert sum(by_node.values()) == 80  # lost blocks are recomputed, each video reaches the driver once
    assert len(by_node) == 2 and cluster["head"] not in by_node, by_node  # both worker nodes scored
    table = pq.read_table(out)
    assert sorted(table.column("row_id").to_pylist()) == list(range(40))  # every input row exactly once
    assert table.column("path_A").to_pylist() == pq.read_table(relabel_input).column("path_A").to_pylist() or sorted(
        table.column("path_A").to_pylist()
    ) == sorted(pq.read_table(relabel_input).column("path_A").to_pylist())
    assert all(e is None for e in table.column("error").to_pylist())
