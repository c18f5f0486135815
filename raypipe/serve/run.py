"""`raypipe serve` (start the apps on a local Ray from serve/config.yaml) and `raypipe score` (a small client)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "serve" / "config.yaml"


def load_serve_config(path: str | None) -> dict:
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.exists():
        raise FileNotFoundError(f"serve config {path} not found")
    return yaml.safe_load(path.read_text())


def build_apps(config: dict, reward_checkpoint: str | None = None, generator: str | None = None,
               latent_reward: str | None = None, lora: str | None = None, overrides: dict | None = None):
    """[(name, route_prefix, Application)] from a Serve config, its args overridden by the CLI values and
    `overrides` {app: {arg: value}}; each app's `deployments` list becomes its builder's deployment_options.
    The generate app is left out when it has no usable generator."""
    from raypipe.serve.apps import generate_app, reward_app

    apps = []
    for spec in config.get("applications", []):
        name = spec["name"]
        args = dict(spec.get("args") or {})
        args.update((overrides or {}).get(name, {}))
        args["deployment_options"] = {d["name"]: {k: v for k, v in d.items() if k != "name"}
                                      for d in spec.get("deployments") or []}
        if name == "reward":
            if reward_checkpoint:
                args["checkpoint"] = reward_checkpoint
            apps.append((name, spec.get("route_prefix", "/"), reward_app(args)))
        elif name == "generate":
            for key, value in (("generator", generator), ("latent_reward", latent_reward), ("lora", lora)):
                if value:
                    args[key] = value
            if not generator and not Path(str(args.get("generator"))).exists():
                print(f"serve: no generator at {args.get('generator')!r}: the generate app is not started "
                      f"(pass --generator and --latent-reward)", flush=True)
                continue
            if args.get("latent_reward") and not Path(args["latent_reward"]).exists():
                raise FileNotFoundError(f"latent reward model {args['latent_reward']} not found")
            apps.append((name, spec.get("route_prefix", "/generate"), generate_app(args)))
        else:
            raise ValueError(f"unknown application {name!r} in the serve config")
    return apps


def start(apps, host: str = "127.0.0.1", port: int = 8000, address: str | None = None) -> str:
    import ray
    from ray import serve

    from raypipe.ray_utils import init_ray

    if not ray.is_initialized():
        init_ray(address)
    serve.start(http_options={"host": host, "port": port})
    for name, route, app in apps:
        serve.run(app, name=name, route_prefix=route, blocking=False)
    return f"http://{host}:{port}"


def serve_from_args(args) -> int:
    config = load_serve_config(args.config)
    http = config.get("http_options") or {}
    port = args.port or int(http.get("port", 8000))
    host = args.host or http.get("host", "127.0.0.1")
    apps = build_apps(config, args.reward_checkpoint, args.generator, args.latent_reward, args.lora)
    url = start(apps, host, port, args.address)
    print(f"serving {[name for name, _, _ in apps]} at {url}  (POST {url}/score, POST {url}/generate, "
          f"GET {url}/healthz); Ctrl-C stops", flush=True)
    if args.no_block:
        return 0
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
    return 0


def score_from_args(args) -> int:
    import requests

    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    url = args.url.rstrip("/") + "/score"
    if args.uri:
        resp = requests.post(url, json={"uri": args.video, "prompt": args.prompt}, headers=headers, timeout=args.timeout)
    else:
        with open(args.video, "rb") as f:
            resp = requests.post(url, files={"file": (Path(args.video).name, f, "video/mp4")},
                                 data={"prompt": args.prompt}, headers=headers, timeout=args.timeout)
    try:
        body = resp.json()
    except ValueError:
        body = {"error": "not_json", "message": resp.text[:500]}
    print(json.dumps(body, indent=2))
    return 0 if resp.ok else 1
