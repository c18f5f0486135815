"""Ray Serve applications: reward scoring (`POST /score`, and `POST /critique` with a LiFT critic) and Flow-NRG
generation (`POST /generate`).

    serve run serve/config.yaml          # or: raypipe serve --reward reward-out/final
    curl -F file=@clip.mp4 -F prompt="a red circle moving left" localhost:8000/score
    curl -H 'content-type: application/json' -d '{"prompt": "a red circle moving left",
         "weights": {"TA": 1}, "strength": 1, "seed": 0}' localhost:8000/generate

reward app (route "/"): the ingress `RewardAPI` in front of `RewardModel` replicas (`raypipe/serve/reward.py`).
generate app (route "/generate"): `GenerateAPI` holding the generator and the latent reward model
(`raypipe/serve/generate.py`). Both: `GET /healthz` (open), `GET /version`, optional bearer token from the env var
named by `auth_token_env` (`raypipe/serve/ingress.py`). Every bad request gets a 4xx JSON
`{"error": kind, "message": ...}`; an unexpected failure is a 500 JSON and the replica keeps serving.

The builders below are the `import_path` targets of serve/config.yaml; their args are typed by
`raypipe/serve/config.py` (`RewardAppConfig`, `GenerateAppConfig`).
"""

from __future__ import annotations

from raypipe.serve.config import generate_app_config, reward_app_config
from raypipe.serve.generate import GenerateAPI
from raypipe.serve.reward import CriticModel, RewardAPI, RewardModel


def _with_options(deployment, options: dict | None):
    return deployment.options(**options) if options else deployment


def _batched(options: dict | None, batch: int) -> dict:
    """A batching replica takes at least two batches of requests at once (one scored, one filling) unless told
    otherwise: Serve's default of 5 would never fill a batch of 8, and says so on every start."""
    return {"max_ongoing_requests": max(5, 2 * int(batch)), **(options or {})}


def reward_app(args: dict):
    """Builder for `serve run` / `serve deploy` (import path raypipe.serve.apps:reward_app); `args` are the
    fields of `RewardAppConfig` (reward, batch, batch_wait_s, ..., deployment_options)."""
    from raypipe.reward.scoring import reward_options

    cfg = reward_app_config(args)
    options = cfg.deployment_options
    load = reward_options(cfg.reward, cfg.base, cfg.template_file)  # fails here, not in a replica, when unreadable
    model = _with_options(RewardModel, _batched(options.get("RewardModel"), cfg.batch)).bind(
        cfg.reward, cfg.batch, cfg.batch_wait_s, cfg.dtype, load
    )
    critic = None
    if cfg.critic:
        critic = _with_options(CriticModel, _batched(options.get("CriticModel"), cfg.batch)).bind(
            cfg.critic, cfg.batch, cfg.batch_wait_s, cfg.dtype
        )
    return _with_options(RewardAPI, options.get("RewardAPI")).bind(model, cfg, critic)


def generate_app(args: dict):
    """Builder (import path raypipe.serve.apps:generate_app); `args` are the fields of `GenerateAppConfig`
    (generator, latent_reward, lora, max_steps, ..., deployment_options)."""
    cfg = generate_app_config(args)
    return _with_options(GenerateAPI, cfg.deployment_options.get("GenerateAPI")).bind(cfg)
