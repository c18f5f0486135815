"""`raypipe bench serve`: load test of the reward app on loopback.

    raypipe bench serve --out bench-out/serve.json [--reward reward-out/final]

1. Nominal load: `--concurrency` clients send `--requests` uploads of SynthPref clips to a local deployment with
   ONE RewardModel replica, once with `@serve.batch` (max batch `--batch`) and once with batch size 1:
   throughput, p50/p95/p99 latency, non-2xx count (target 0), and the forward-pass sizes the replica ran.
2. Burst: the same app with autoscaling (1..`--max-replicas` replicas, target `--target-ongoing` ongoing requests
   per replica); `--burst-concurrency` clients for `--burst-s` seconds, then idle: replica count over time, time to
   scale up, time to come back down, non-2xx during the burst.
3. Soak and fuzz (`--soak-minutes N`, `--fuzz-requests M`; off by default): the batched app under the nominal load
   for N minutes — per minute the requests, non-2xx, p99 latency and each replica's RSS (drift of the last minutes
   against the first, target within 10%) — then M hostile requests (`raypipe.bench.serve_fuzz`: every one a 4xx
   or a closed connection, a valid request after every 24 answered 200) and whether any replica restarted.
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
    return {
        "p50_ms": round(float(q[0]), 1),
        "p95_ms": round(float(q[1]), 1),
        "p99_ms": round(float(q[2]), 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1),
    }


def _post(url: str, payload: bytes, prompt: str) -> tuple[int, float]:
    import requests

    t0 = time.perf_counter()
    try:
        resp = requests.post(
            f"{url}/score", files={"file": ("clip.mp4", payload, "video/mp4")}, data={"prompt": prompt}, timeout=300
        )
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
    return {
        "requests": n,
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(ok) / wall, 2),
        "non_2xx": sum(1 for code, _ in results if not 200 <= code < 300),
        **_percentiles(ok),
    }


def _replicas(app: str, deployment: str) -> int:
    from ray import serve

    try:
        status = serve.status().applications[app].deployments[deployment]
        return int(sum(status.replica_states.values())) if status.replica_states else 0
    except Exception:
        return -1


def _reward_or_tiny(checkpoint: str | None, work: Path) -> str:
    """The reward checkpoint to serve: the given one, else an untrained tiny VideoReward saved under `work`."""
    if checkpoint is not None:
        return checkpoint
    from raypipe.reward.model import RewardModelConfig, VideoReward

    return str(
        VideoReward.build(RewardModelConfig(), tiny_dir=work / "backbone").save_pretrained(
            work / "ckpt", extra={"sampling.json": {"fps": 4.0, "max_frames": 16}}
        )
    )


def _synth_payloads(work: Path) -> list[tuple[bytes, str]]:
    """(mp4 bytes, prompt) of 16 SynthPref clips: what the clients upload."""
    from raypipe.config import SynthConfig
    from raypipe.video.synth import make_synthpref

    table = make_synthpref(work / "synth", SynthConfig(pairs=16, seed=3))
    return [
        ((work / "synth" / p).read_bytes(), q)
        for p, q in zip(table.column("path_A").to_pylist(), table.column("prompt").to_pylist())
    ]


def _bench_app(
    reward: str, batch: int, batch_wait_s: float, model_options: dict, api_options: dict, roots: list | None = None
):
    """The reward app with Serve options for its two deployments; no CPUs reserved, so it fits any machine."""
    from raypipe.serve.apps import reward_app

    light = {"ray_actor_options": {"num_cpus": 0}}
    return reward_app(
        {
            "reward": reward,
            "batch": batch,
            "batch_wait_s": batch_wait_s,
            "allowed_roots": list(roots or []),
            "deployment_options": {"RewardModel": {**light, **model_options}, "RewardAPI": {**light, **api_options}},
        }
    )


def _batch_sizes(url: str) -> list[int]:
    import requests

    return requests.get(f"{url}/batches", timeout=60).json()["batch_sizes"]


def _nominal_load(args, reward: str, payloads, port: int, label: str, batch: int) -> dict:
    """Load on ONE RewardModel replica with max batch `batch`: latency, throughput, the forward-pass sizes."""
    from ray import serve

    from raypipe.serve.run import start

    app = _bench_app(
        reward, batch, args.batch_wait_s, {"num_replicas": 1, "max_ongoing_requests": 64}, {"max_ongoing_requests": 128}
    )
    url = start([(f"bench-{label}", "/", app)], port=port)
    for _ in range(3):  # warm-up (model load, first forward)
        _post(url, *payloads[0])
    before = _batch_sizes(url)
    print(f"{label}: {args.requests} requests, {args.concurrency} concurrent", flush=True)
    result = load(url, payloads, args.requests, args.concurrency)
    sizes = _batch_sizes(url)[len(before) :]
    result["forward_passes"] = len(sizes)
    result["mean_batch"] = round(float(np.mean(sizes)), 2) if sizes else None
    print(f"    {result}", flush=True)
    serve.delete(f"bench-{label}")
    return result


def _autoscaling_app(args, reward: str):
    """The reward app with 1..`--max-replicas` RewardModel replicas, scaling quickly so a short burst shows it."""
    return _bench_app(
        reward,
        args.batch,
        args.batch_wait_s,
        {
            "max_ongoing_requests": 16,
            "autoscaling_config": {
                "min_replicas": 1,
                "max_replicas": args.max_replicas,
                "target_ongoing_requests": args.target_ongoing,
                "upscale_delay_s": 1.0,
                "downscale_delay_s": args.downscale_delay_s,
                "metrics_interval_s": 0.5,
                "look_back_period_s": 2.0,
            },
        },
        {"max_ongoing_requests": 256},
    )


class _ReplicaWatch:
    """Samples the RewardModel replica count of `app` every 0.5 s in a thread: [(seconds since start, count)]."""

    def __init__(self, app: str):
        self.app, self.timeline = app, []
        self.t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.timeline.append((self.elapsed(), _replicas(self.app, "RewardModel")))
            time.sleep(0.5)

    def elapsed(self) -> float:
        return round(time.perf_counter() - self.t0, 1)

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._thread.join()
        return self.timeline


def _send_burst(url: str, payloads, clients: int, seconds: float) -> list[tuple[int, float]]:
    """`clients` threads sending uploads back to back for `seconds`: [(status code, latency)]."""
    codes: list[tuple[int, float]] = []
    end = time.perf_counter() + seconds

    def client(i):
        while time.perf_counter() < end:
            codes.append(_post(url, *payloads[i % len(payloads)]))

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return codes


def _burst_report(args, codes, timeline, burst_end: float) -> dict:
    peak = max((n for _, n in timeline), default=0)
    up = next((ts for ts, n in timeline if n > 1), None)
    down = next((ts for ts, n in timeline if ts > burst_end and n == 1), None)
    ok = [lat for code, lat in codes if 200 <= code < 300]
    return {
        "clients": args.burst_concurrency,
        "seconds": args.burst_s,
        "requests": len(codes),
        "non_2xx": sum(1 for code, _ in codes if not 200 <= code < 300),
        "throughput_rps": round(len(ok) / args.burst_s, 2),
        **_percentiles(ok),
        "peak_replicas": peak,
        "scaled_up_at_s": up,
        "burst_ended_at_s": round(burst_end, 1),
        "back_to_1_replica_at_s": down,
        "recovery_s": round(down - burst_end, 1) if down is not None else None,
        "timeline": timeline[::2],
    }


def _burst(args, reward: str, payloads, port: int) -> dict:
    """`--burst-concurrency` clients for `--burst-s` on the autoscaling app, then idle until it is back to one
    replica (or `--recovery-timeout-s`)."""
    from ray import serve

    from raypipe.serve.run import start

    url = start([("bench-burst", "/", _autoscaling_app(args, reward))], port=port)
    _post(url, *payloads[0])
    watch = _ReplicaWatch("bench-burst")
    print(f"burst: {args.burst_concurrency} clients for {args.burst_s} s", flush=True)
    codes = _send_burst(url, payloads, args.burst_concurrency, args.burst_s)
    burst_end = time.perf_counter() - watch.t0
    deadline = time.perf_counter() + args.recovery_timeout_s
    while time.perf_counter() < deadline and _replicas("bench-burst", "RewardModel") > 1:
        time.sleep(1.0)
    report = _burst_report(args, codes, watch.stop(), burst_end)
    print(
        f"    burst: peak {report['peak_replicas']} replicas, up at {report['scaled_up_at_s']} s, back to 1 at "
        f"{report['back_to_1_replica_at_s']} s",
        flush=True,
    )
    serve.delete("bench-burst")
    return report


def run_serve_bench(args) -> dict:
    import ray
    from ray import serve

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="raypipe-bench-serve-"))
    reward = _reward_or_tiny(args.reward, work)
    payloads = _synth_payloads(work)
    if not ray.is_initialized():
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    report: dict = {
        "checkpoint": reward,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "cpus": ray.cluster_resources().get("CPU"),
    }
    for label, batch in (("batched", args.batch), ("unbatched", 1)):
        report[label] = _nominal_load(args, reward, payloads, port, label, batch)
    report["batched_over_unbatched_throughput"] = round(
        report["batched"]["throughput_rps"] / max(report["unbatched"]["throughput_rps"], 1e-9), 3
    )
    report["burst"] = _burst(args, reward, payloads, port)
    if args.soak_minutes > 0 or args.fuzz_requests > 0:
        report["soak"] = _soak_and_fuzz(args, reward, payloads, port, work)
    serve.shutdown()
    out.write_text(json.dumps(report, indent=2))
    return report


def _replica_processes(app: str) -> dict[str, tuple[int, int]]:
    """{actor name: (pid, restarts)} of the live Serve replicas of `app` (from the GCS; no dashboard needed)."""
    import ray._private.state as state

    return {
        v["Name"]: (v["Pid"], v["NumRestarts"])
        for v in state.actors().values()
        if v["State"] == "ALIVE" and (v.get("Name") or "").startswith(f"SERVE_REPLICA::{app}#")
    }


def _soak_and_fuzz(args, reward: str, payloads, port: int, work: Path) -> dict:
    import psutil
    from ray import serve

    from raypipe.bench.serve_fuzz import fuzz, hostile_files
    from raypipe.serve.run import start

    roots = work / "synth"
    (work / "outside.mp4").write_bytes(payloads[0][0])
    app = _bench_app(
        reward,
        args.batch,
        args.batch_wait_s,
        {"num_replicas": 1, "max_ongoing_requests": 64},
        {"max_ongoing_requests": 128},
        roots=[str(roots)],
    )
    url = start([("bench-soak", "/", app)], port=port)
    for _ in range(3):
        _post(url, *payloads[0])
    replicas = _replica_processes("bench-soak")
    report: dict = {"minutes": args.soak_minutes, "concurrency": args.concurrency, "replicas": sorted(replicas)}
    if args.soak_minutes > 0:
        report.update(_soak(url, payloads, replicas, args.soak_minutes * 60.0, args.concurrency, psutil))
    if args.fuzz_requests > 0:
        print(f"fuzz: {args.fuzz_requests} hostile requests", flush=True)
        report["fuzz"] = fuzz(
            url,
            payloads[0][0],
            hostile_files(roots, work / "outside.mp4"),
            args.fuzz_requests,
            lambda: _post(url, *payloads[1])[0] == 200,
        )
        report["fuzz"]["failures"] = report["fuzz"]["failures"][:20]
    report["replicas_restarted"] = _replica_processes("bench-soak") != replicas
    serve.delete("bench-soak")
    return report


def _soak(url: str, payloads, replicas: dict, seconds: float, clients: int, psutil) -> dict:
    """`clients` uploading back to back for `seconds`; RSS of every replica sampled every 5 s."""
    results: list[tuple[float, int, float]] = []
    rss: list[tuple[float, str, float]] = []
    t0 = time.monotonic()
    stop = t0 + seconds

    def client(i: int) -> None:
        k = i
        while time.monotonic() < stop:
            code, latency = _post(url, *payloads[k % len(payloads)])
            results.append((time.monotonic() - t0, code, latency))
            k += clients

    def sampler() -> None:
        while time.monotonic() < stop:
            for name, (pid, _) in replicas.items():
                try:
                    rss.append((time.monotonic() - t0, name.split("#")[1], psutil.Process(pid).memory_info().rss))
                except psutil.Error:
                    rss.append((time.monotonic() - t0, name.split("#")[1], float("nan")))
            time.sleep(5.0)

    print(f"soak: {clients} clients for {seconds / 60:.1f} min", flush=True)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    threads.append(threading.Thread(target=sampler))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return soak_report(results, rss, seconds)


def soak_report(results: list[tuple[float, int, float]], rss: list[tuple[float, str, float]], seconds: float) -> dict:
    """Per minute: requests, non-2xx, p99 latency, max RSS (MB) per deployment; the RSS drift of every later minute
    against the first (max |rss_m / rss_1 − 1|; target ≤ 0.10), and the totals."""
    minutes = max(1, int(np.ceil(seconds / 60.0)))
    per_minute = []
    deployments = sorted({d for _, d, _ in rss})
    for m in range(minutes):
        done = [(c, lat) for t, c, lat in results if m * 60 <= t < (m + 1) * 60]
        ok = [lat for c, lat in done if 200 <= c < 300]
        row = {
            "minute": m + 1,
            "requests": len(done),
            "non_2xx": sum(1 for c, _ in done if not 200 <= c < 300),
            "p99_ms": _percentiles(ok).get("p99_ms"),
        }
        for d in deployments:
            values = [v for t, dd, v in rss if dd == d and m * 60 <= t < (m + 1) * 60 and v == v]
            row[f"rss_mb_{d}"] = round(max(values) / 2**20, 1) if values else None
        per_minute.append(row)
    drift = {}
    for d in deployments:
        series = [r[f"rss_mb_{d}"] for r in per_minute if r[f"rss_mb_{d}"] is not None]
        drift[d] = round(max(abs(v / series[0] - 1) for v in series), 4) if series else None
    return {
        "per_minute": per_minute,
        "requests": len(results),
        "non_2xx": sum(1 for _, c, _ in results if not 200 <= c < 300),
        "rss_drift": drift,
        "rss_flat_within_10pct": all(v is not None and v <= 0.10 for v in drift.values()) if drift else None,
    }
