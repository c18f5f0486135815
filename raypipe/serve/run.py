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


def build_apps(
    config: dict,
    reward: str | None = None,
    generator: str | None = None,
    latent_reward: str | None = None,
    lora: str | None = None,
    overrides: dict | None = None,
):
    """[(name, route_prefix, Application)] from a Serve config, its args overridden by the CLI values and
    `overrides` {app: {arg: value}}; each app's `deployments` list becomes its builder's deployment_options.
    The generate app is left out when it has no usable generator."""
    from raypipe.serve.apps import generate_app, reward_app

    apps = []
    for spec in config.get("applications", []):
        name = spec["name"]
        args = dict(spec.get("args") or {})
        args.update((overrides or {}).get(name, {}))
        args["deployment_options"] = {
            d["name"]: {k: v for k, v in d.items() if k != "name"} for d in spec.get("deployments") or []
        }
        if name == "reward":
            if reward:
                args["reward"] = reward
            apps.append((name, spec.get("route_prefix", "/"), reward_app(args)))
        elif name == "generate":
            for key, value in (("generator", generator), ("latent_reward", latent_reward), ("lora", lora)):
                if value:
                    args[key] = value
            if not generator and not Path(str(args.get("generator"))).exists():
                print(
                    f"serve: no generator at {args.get('generator')!r}: the generate app is not started "
                    f"(pass --generator and --latent-reward)",
                    flush=True,
                )
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

    from raypipe.distributed.cluster import init_ray

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
    pairs = (("base", args.base), ("template_file", args.template_file), ("critic", args.critic))
    load = {k: v for k, v in pairs if v}
    apps = build_apps(config, args.reward, args.generator, args.latent_reward, args.lora, {"reward": load})
    url = start(apps, host, port, args.address)
    print(
        f"serving {[name for name, _, _ in apps]} at {url}  (POST {url}/score, /critique with --critic, "
        f"POST {url}/generate, "
        f"GET {url}/healthz); Ctrl-C stops",
        flush=True,
    )
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
        resp = requests.post(
            url, json={"uri": args.video, "prompt": args.prompt}, headers=headers, timeout=args.timeout
        )
    else:
        with open(args.video, "rb") as f:
            resp = requests.post(
                url,
                files={"file": (Path(args.video).name, f, "video/mp4")},
                data={"prompt": args.prompt},
                headers=headers,
                timeout=args.timeout,
            )
    try:
        body = resp.json()
    except ValueError:
        body = {"error": "not_json", "message": resp.text[:500]}
    print(json.dumps(body, indent=2))
    return 0 if resp.ok else 1


def add_serve_commands(sub) -> None:
    """`raypipe serve` (start the apps) and `raypipe score` (a client) on the CLI."""
    p = sub.add_parser(
        "serve",
        help="start the reward (/score) and generate (/generate) Serve apps on a local Ray",
        description="Reads serve/config.yaml (autoscaling, batching, limits, auth env var) and "
        "starts its applications; the paths given here override the config's args.",
    )
    p.add_argument("--reward", help="VideoReward checkpoint for /score (ours, or the released VideoAlign layout)")
    p.add_argument("--base", help="base model folder for a released-layout checkpoint (default: its own path)")
    p.add_argument("--critic", help="a LiFT critic checkpoint (train-critic OUT/final) for POST /critique")
    p.add_argument(
        "--template-file",
        dest="template_file",
        help="the official prompt_template.py for the videoalign template (default: $RAYPIPE_VIDEOALIGN_TEMPLATE)",
    )
    p.add_argument(
        "--generator",
        help="WanPipeline folder for /generate (omit: the generate app is skipped unless the config's path exists)",
    )
    p.add_argument("--latent-reward", dest="latent_reward", help="latent reward model for guidance")
    p.add_argument("--lora", help="adapters to load into the generator")
    p.add_argument("--config", help="Serve config (default serve/config.yaml)")
    p.add_argument("--port", type=int, help="HTTP port (default from the config: 8000)")
    p.add_argument("--host", help="HTTP host (default from the config: 127.0.0.1)")
    p.add_argument("--address", help="Ray address (default: a local Ray)")
    p.add_argument("--no-block", action="store_true", dest="no_block", help="return after starting (tests)")
    p.set_defaults(func=serve_from_args)
    c = sub.add_parser(
        "score",
        help="client: score a video with a running reward server",
        description="POSTs VIDEO (multipart upload, or --uri to send the path for the server to "
        "read under its allowed roots) and PROMPT to URL/score; prints the JSON.",
    )
    c.add_argument("video", metavar="VIDEO")
    c.add_argument("prompt", metavar="PROMPT")
    c.add_argument("--url", default="http://127.0.0.1:8000", help="server (default http://127.0.0.1:8000)")
    c.add_argument("--uri", action="store_true", help="send VIDEO as a URI instead of uploading it")
    c.add_argument("--token", default=None, help="bearer token (default: none)")
    c.add_argument("--timeout", type=float, default=120.0)
    c.set_defaults(func=score_from_args)
