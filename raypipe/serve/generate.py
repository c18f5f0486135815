"""The generate app's deployment: `GenerateAPI` holds the generator (with its LoRA) and the latent reward model and
answers `POST /generate` with a Flow-NRG guided sample."""
# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations (Request, the body model)
# at definition time.

import asyncio
import json
import tempfile
import uuid
from pathlib import Path

import numpy as np
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from ray import serve

from raypipe.serve.config import GenerateAppConfig
from raypipe.serve.ingress import Ingress, RequestError, ingress_app

MAX_CFG_SCALE = 20.0


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=1000)
    weights: dict[str, float] = Field(default_factory=dict)
    strength: float = 0.0
    seed: StrictInt = 0
    steps: StrictInt = 20
    cfg_scale: float = 4.0
    output: str = "uri"  # uri | mp4


app = ingress_app("raypipe generate")


@serve.deployment(name="GenerateAPI")
@serve.ingress(app)
class GenerateAPI(Ingress):
    """`POST /generate`: prompt, weights and strength -> a guided sample (its path, or the mp4 itself)."""

    app_name = "generate"

    def __init__(self, cfg: GenerateAppConfig):
        from raypipe.nrg.model import LatentReward
        from raypipe.nrg.sampling import load_generator

        self.generator = load_generator(cfg.generator, cfg.lora, cfg.device, cfg.dtype)
        self.latent_reward = (
            LatentReward.from_pretrained(
                cfg.latent_reward, cfg.dtype, str(self.generator.device), generator=self.generator
            )
            if cfg.latent_reward
            else None
        )
        self.auth_token_env = cfg.auth_token_env
        self.frames, self.height, self.width = cfg.clip.frames, cfg.clip.height, cfg.clip.width
        self.shape = self.generator.latent_shape(self.frames, self.height, self.width, check=True)
        self.max_steps, self.max_strength, self.max_weight = cfg.max_steps, cfg.max_strength, cfg.max_weight
        self.fps = cfg.fps
        self.out = Path(cfg.output_dir or tempfile.mkdtemp(prefix="raypipe-generate-"))
        self.out.mkdir(parents=True, exist_ok=True)
        self.info = {"generator": cfg.generator, "latent_reward": cfg.latent_reward, "lora": cfg.lora}
        self.lock = asyncio.Lock()

    @property
    def dims(self) -> list[str]:
        return list(self.latent_reward.dims) if self.latent_reward else []

    def version_info(self) -> dict:
        return {
            **self.info,
            "dimensions": self.dims,
            "max_steps": self.max_steps,
            "max_strength": self.max_strength,
            "clip": [self.frames, self.height, self.width],
        }

    @app.post("/")
    async def generate(self, request: Request, body: GenerateRequest):
        self.authorize(request)
        weights = self._validate(body)
        async with self.lock:  # one sampling at a time per replica (autoscaling adds replicas)
            result = await asyncio.to_thread(self._sample, body, weights)
        if body.output == "uri":
            return result
        return Response(
            content=Path(result["uri"]).read_bytes(),
            media_type="video/mp4",
            headers={"X-Latent-Rewards": json.dumps(result["latent_rewards"])},
        )

    def _validate(self, body: GenerateRequest) -> dict[str, float]:
        """The request's weights over every dimension (0 where not given), after the range checks."""
        self._check_ranges(body)
        self._check_weights(body.weights)
        if body.strength and any(body.weights.values()) and self.latent_reward is None:
            raise RequestError(422, "guidance_unavailable", "this server has no latent reward model")
        return {d: float(body.weights.get(d, 0.0)) for d in self.dims}

    def _check_ranges(self, body: GenerateRequest) -> None:
        if not 1 <= body.steps <= self.max_steps:
            raise RequestError(
                422,
                "too_many_steps" if body.steps > self.max_steps else "invalid_request",
                f"steps must be in [1, {self.max_steps}], got {body.steps}",
            )
        if not 0.0 <= body.strength <= self.max_strength or not np.isfinite(body.strength):
            raise RequestError(422, "out_of_range", f"strength must be in [0, {self.max_strength}]")
        if not 1.0 <= body.cfg_scale <= MAX_CFG_SCALE:
            raise RequestError(422, "out_of_range", "cfg_scale must be in [1, 20]")
        if body.output not in ("uri", "mp4"):
            raise RequestError(422, "invalid_request", "output must be 'uri' or 'mp4'")

    def _check_weights(self, weights: dict[str, float]) -> None:
        unknown = [d for d in weights if d not in self.dims]
        if unknown:
            raise RequestError(
                422, "unknown_dimension", f"unknown dimensions {unknown}; the latent reward model has {self.dims}"
            )
        bad = {d: w for d, w in weights.items() if not np.isfinite(w) or abs(w) > self.max_weight}
        if bad:
            raise RequestError(
                422, "out_of_range", f"weights must be finite and in [-{self.max_weight}, {self.max_weight}], got {bad}"
            )

    def _sample(self, body: GenerateRequest, weights: dict[str, float]) -> dict:
        from raypipe.nrg.sampling import guided_samples
        from raypipe.video.encode import write_mp4

        res = guided_samples(
            self.generator,
            self.latent_reward,
            [body.prompt],
            weights,
            body.strength,
            body.seed,
            body.steps,
            body.cfg_scale,
            self.shape,
        )
        path = self.out / f"{uuid.uuid4().hex}.mp4"
        write_mp4(res["videos"][0], path, self.fps)
        rewards = None
        if res["latent_rewards"] is not None:
            rewards = {d: float(v) for d, v in zip(self.latent_reward.dims, res["latent_rewards"][0])}
        return {
            "uri": str(path),
            "latent_rewards": rewards,
            "weights": weights,
            "strength": body.strength,
            "seed": body.seed,
            "steps": body.steps,
            "sample_s": round(res["sample_s"], 3),
        }
