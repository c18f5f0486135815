"""The args of the two Serve apps, typed: `serve/config.yaml`'s `args:` of each application (and the CLI's paths)
become a `RewardAppConfig` or `GenerateAppConfig`, so an unknown key or a wrong type fails at build time with a
`ConfigError` naming the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from raypipe.config import ClipConfig, ConfigError, build_config

DEFAULT_TOKEN_ENV = "RAYPIPE_SERVE_TOKEN"


@dataclasses.dataclass
class RewardAppConfig:
    """The reward app (`POST /score`): a VideoReward behind an upload/URI-checking ingress."""

    reward: str = ""  # VideoReward checkpoint folder (ours, or the released VideoAlign layout)
    # base model folder for a checkpoint in the released VideoAlign layout (default: its model_name_or_path)
    base: str | None = None
    # the official prompt_template.py (or a text file) for the videoalign template; default $RAYPIPE_VIDEOALIGN_TEMPLATE
    template_file: str | None = None
    batch: int = 8  # videos per forward pass: the @serve.batch max batch size
    batch_wait_s: float = 0.01  # how long a batch waits to fill
    dtype: str | None = None  # model dtype (None: the checkpoint's)
    critic: str | None = (
        None  # a LiFT critic checkpoint (train-critic OUT/final) for POST /critique; None: no /critique
    )
    weight_map: dict[str, float] | None = None  # the critic's rating -> weight map for lift_weight (None: LiFT's)
    max_upload_mb: float = 256.0
    allowed_roots: list[str] = dataclasses.field(default_factory=list)  # folders a {"uri"} may read; empty: none
    auth_token_env: str | None = DEFAULT_TOKEN_ENV  # env var holding the bearer token (unset or empty: no auth)
    # per deployment (RewardModel, RewardAPI): Serve options such as autoscaling_config, ray_actor_options
    deployment_options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class GenerateClipConfig(ClipConfig):
    """The clip the generate app samples: small by default, so a CPU replica answers in seconds."""

    height: int = 32
    width: int = 32


@dataclasses.dataclass
class GenerateAppConfig:
    """The generate app (`POST /generate`): Flow-NRG guided sampling with a generator and a latent reward."""

    generator: str = ""  # generator pipeline folder
    latent_reward: str | None = None  # latent reward model for guidance (None: unguided only)
    lora: str | None = None  # adapters loaded into the generator
    dtype: str = "float32"
    device: str = "auto"
    max_steps: int = 50  # more sampling steps per request are refused
    max_strength: float = 100.0  # guidance strength limit
    max_weight: float = 10.0  # |weight| limit per dimension
    clip: GenerateClipConfig = dataclasses.field(default_factory=GenerateClipConfig)
    output_dir: str | None = None  # where sampled mp4s are written (None: a fresh temp folder)
    fps: float = 8.0  # of the written mp4s
    auth_token_env: str | None = DEFAULT_TOKEN_ENV
    # per deployment (GenerateAPI): Serve options
    deployment_options: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


REWARD_DEPLOYMENTS = ("RewardModel", "CriticModel", "RewardAPI")
GENERATE_DEPLOYMENTS = ("GenerateAPI",)


def _check_deployment_names(options: dict, known: tuple[str, ...], app: str) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"deployment_options: unknown deployment(s) {unknown} in the {app} app; it has {list(known)}")


def reward_app_config(args: dict | None) -> RewardAppConfig:
    """The checked config of the reward app from its Serve args."""
    cfg = build_config(RewardAppConfig, dict(args or {}))
    from raypipe.reward.videoalign import is_videoalign

    if not cfg.reward or not ((Path(cfg.reward) / "reward_config.json").exists() or is_videoalign(cfg.reward)):
        raise ConfigError(f"reward: {cfg.reward!r} is not a VideoReward checkpoint folder (ours or the released)")
    if cfg.critic is not None and not (Path(cfg.critic) / "critic_config.json").exists():
        raise ConfigError(f"critic: {cfg.critic!r} is not a critic checkpoint folder (no critic_config.json)")
    if cfg.weight_map is not None:
        from raypipe.data.ratings import check_weight_map

        try:
            check_weight_map(cfg.weight_map)
        except ValueError as e:
            raise ConfigError(f"weight_map: {e}") from None
    _check_deployment_names(cfg.deployment_options, REWARD_DEPLOYMENTS, "reward")
    return cfg


def generate_app_config(args: dict | None) -> GenerateAppConfig:
    """The checked config of the generate app from its Serve args."""
    cfg = build_config(GenerateAppConfig, dict(args or {}))
    if not cfg.generator or not Path(cfg.generator).exists():
        raise ConfigError(f"generator: {cfg.generator!r} is not a folder")
    _check_deployment_names(cfg.deployment_options, GENERATE_DEPLOYMENTS, "generate")
    return cfg
