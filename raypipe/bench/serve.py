"""`raypipe bench serve`: load test of the reward app on loopback.

    raypipe bench serve --out bench-out/serve.json [--checkpoint reward-out/final]

1. Nominal load: `--concurrency` clients send `--requests` uploads of SynthPref clips to a local deployment with
   ONE RewardModel replica, once with `@serve.batch` (max batch `--batch-size`) and once with batch size 1:
   throughput, p50/p95/p99 latency, non-2xx count (target 0), and the forward-pass sizes the replica ran.
2. Burst: the same app with autoscaling (1..`--max-replicas` replicas, target `--target-ongoing` ongoing requests
   per replica); `--burst-concurrency` clients for `--burst-s` seconds, then idle: replica count over time, time to
   scale up, time to come back down, non-2xx during the burst.
"""
from __future__ import annotations

import json
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {}
    q = np.percentile(np.array(latencies) * 1000, [50, 95, 99])
    return {"p50_ms": round(float(q[0]), 1), "p95_ms": round(float(q[1]), 1), "p99_ms": round(float(q[2]), 1),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 1)}


def _post(url: str, payload: bytes, prompt: str) -> tuple[int, float]:
    import requests

    t0 = time.perf_counter()
    try:
        resp = requests.post(f"{url}/score", files={"file": ("clip.mp4", payload, "video/mp4")},
                             data={"prompt": prompt}, timeout=300)
        code = resp.status_code
    except Exception:
        code = -1
    return code, time.perf_counter() - t0


def load(url: str, payloads: list[tuple[bytes, str]], n: int, concurrency: int) -> dict:
    jobs = [payloads[i % len(payloads)] for i in range(n)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda job: _post(url, *job), jobs))
    wall = time.perf_counter() - t0
    ok = [lat for code, lat in results if 200 <= code < 300]
    return {"requests": n, "concurrency": concurrency, "wall_s": round(wall, 2),
            "throughput_rps": round(len(ok) / wall, 2), "non_2xx": sum(1 for code, _ in results if not 200 <= code < 300),
            **_percentiles(ok)}


def _replicas(app: str, deployment: str) -> int:
    from ray import serve

    try:
        status = serve.status().applications[app].deployments[deployment]
        return int(sum(status.replica_states.values())) if status.replica_states else 0
    except Exception:
        return -1


def run_serve_bench(args) -> dict:
    import ray
    import requests
    from ray import serve

    from raypipe.serve.apps import reward_app
    from raypipe.serve.run import start
    from raypipe.video.synth import make_synthpref
    from raypipe.config import SynthConfig

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="raypipe-bench-serve-"))
    checkpoint = args.checkpoint
    if checkpoint is None:
        from raypipe.reward.model import RewardModelConfig, VideoReward

        checkpoint = str(VideoReward.build(RewardModelConfig(), tiny_dir=work / "backbone").save_pretrained(
            work / "ckpt", extra={"sampling.json": {"fps": 4.0, "max_frames": 16}}))
    table = make_synthpref(work / "synth", SynthConfig(pairs=16, seed=3))
    payloads = [((work / "synth" / p).read_bytes(), q) for p, q in
                zip(table.column("path_A").to_pylist(), table.column("prompt").to_pylist())]
    if not ray.is_initialized():
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    report: dict = {"checkpoint": checkpoint, "requests": args.requests, "concurrency": args.concurrency,
                    "cpus": ray.cluster_resources().get("CPU")}
    light = {"ray_actor_options": {"num_cpus": 0}}
    url = None
    for label, batch in (("batched", args.batch_size), ("unbatched", 1)):
        app = reward_app({"checkpoint": checkpoint, "batch_size": batch, "batch_wait_s": args.batch_wait_s,
                          "deployment_options": {"RewardModel": {**light, "num_replicas": 1,
                                                                 "max_ongoing_requests": 64},
                                                 "RewardAPI": {**light, "max_ongoing_requests": 128}}})
        url = start([(f"bench-{label}", "/", app)], port=port)
        for _ in range(3):  # warm-up (model load, first forward)
            _post(url, *payloads[0])
        before = requests.get(f"{url}/batches", timeout=60).json()["batch_sizes"]
        print(f"{label}: {args.requests} requests, {args.concurrency} concurrent", flush=True)
        report[label] = load(url, payloads, args.requests, args.concurrency)
        sizes = requests.get(f"{url}/batches", timeout=60).json()["batch_sizes"][len(before):]
        report[label]["forward_passes"] = len(sizes)
        report[label]["mean_batch"] = round(float(np.mean(sizes)), 2) if sizes else None
        print(f"    {report[label]}", flush=True)
        serve.delete(f"bench-{label}")
    report["batched_over_unbatched_throughput"] = round(
        report["batched"]["throughput_rps"] / max(report["unbatched"]["throughput_rps"], 1e-9), 3)

    # burst: autoscaling 1..max replicas
    app = reward_app({"checkpoint": checkpoint, "batch_size": args.batch_size, "batch_wait_s": args.batch_wait_s,
                      "deployment_options": {
                          "RewardModel": {**light, "max_ongoing_requests": 16, "autoscaling_config": {
                              "min_replicas": 1, "max_replicas": args.max_replicas,
                              "target_ongoing_requests": args.target_ongoing, "upscale_delay_s": 1.0,
                              "downscale_delay_s": args.downscale_delay_s, "metrics_interval_s": 0.5,
                              "look_back_period_s": 2.0}},
                          "RewardAPI": {**light, "max_ongoing_requests": 256}}})
    url = start([("bench-burst", "/", app)], port=port)
    _post(url, *payloads[0])
    timeline: list[tuple[float, int]] = []
    stop = threading.Event()
    t0 = time.perf_counter()

    def watch():
        while not stop.is_set():
            timeline.append((round(time.perf_counter() - t0, 1), _replicas("bench-burst", "RewardModel")))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    codes: list[tuple[int, float]] = []
    end = time.perf_counter() + args.burst_s

    def client(i):
        while time.perf_counter() < end:
            codes.append(_post(url, *payloads[i % len(payloads)]))

    print(f"burst: {args.burst_concurrency} clients for {args.burst_s} s", flush=True)
    with ThreadPoolExecutor(args.burst_concurrency) as pool:
        list(pool.map(client, range(args.burst_concurrency)))
    burst_end = time.perf_counter() - t0
    deadline = time.perf_counter() + args.recovery_timeout_s
    while time.perf_counter() < deadline and _replicas("bench-burst", "RewardModel") > 1:
        time.sleep(1.0)
    stop.set()
    watcher.join()
    peak = max((n for _, n in timeline), default=0)
    up = next((ts for ts, n in timeline if n > 1), None)
    down = next((ts for ts, n in timeline if ts > burst_end and n == 1), None)
    ok = [lat for code, lat in codes if 200 <= code < 300]
    report["burst"] = {"clients": args.burst_concurrency, "seconds": args.burst_s, "requests": len(codes),
                       "non_2xx": sum(1 for code, _ in codes if not 200 <= code < 300),
                       "throughput_rps": round(len(ok) / args.burst_s, 2), **_percentiles(ok),
                       "peak_replicas": peak, "scaled_up_at_s": up, "burst_ended_at_s": round(burst_end, 1),
                       "back_to_1_replica_at_s": down,
                       "recovery_s": round(down - burst_end, 1) if down is not None else None,
                       "timeline": timeline[::2]}
    print(f"    burst: peak {peak} replicas, up at {up} s, back to 1 at {down} s", flush=True)
    serve.delete("bench-burst")
    serve.shutdown()
    out.write_text(json.dumps(report, indent=2))
    return report
