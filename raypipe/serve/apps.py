"""Ray Serve applications: reward scoring (`POST /score`) and Flow-NRG generation (`POST /generate`).

    serve run serve/config.yaml          # or: raypipe serve --reward-checkpoint reward-out/final
    curl -F file=@clip.mp4 -F prompt="a red circle moving left" localhost:8000/score
    curl -H 'content-type: application/json' -d '{"prompt": "a red circle moving left",
         "weights": {"TA": 1}, "strength": 1, "seed": 0}' localhost:8000/generate

reward app (route "/"): an ingress `RewardAPI` (FastAPI: validation, auth, upload limits, decoding with the
checkpoint's sampling) in front of `RewardModel` replicas (the model loaded once per replica, `@serve.batch`
dynamic batching, `num_gpus` per replica from the config). generate app (route "/generate"): `GenerateAPI` holding
the generator and the latent reward model. Both: `GET /healthz` (open), `GET /version` (config), optional bearer
token from the env var named by `auth_token_env`. Every bad request gets a 4xx JSON `{"error": kind, "message": ...}`;
an unexpected failure is a 500 JSON and the replica keeps serving.
"""
# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations (Request, the body
# model) at definition time, and they live inside the class factories.

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from raypipe import __version__

DEFAULT_MAX_UPLOAD_MB = 256.0
# decode failures -> HTTP status: not a video at all 415, too large 413, a video we cannot use 422
_DECODE_STATUS = {"not_a_video": 415, "unsupported_codec": 415, "too_large": 413, "empty": 422, "corrupt": 422,
                  "too_short": 422, "missing": 404, "io_error": 422}


class RequestError(Exception):
    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def error_response(status: int, kind: str, message: str):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": kind, "message": message})


def check_auth(headers, token_env: str | None) -> None:
    """Bearer token from the env var `token_env` (unset or empty: no auth)."""
    token = os.environ.get(token_env or "", "")
    if not token:
        return
    given = headers.get("authorization", "")
    if given != f"Bearer {token}":
        raise RequestError(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer <token>)")


def resolve_uri(uri: str, allowed_roots: list[str]) -> str:
    """A local path or file:// URI inside one of `allowed_roots` (after resolving symlinks and ..); anything else
    is refused: other schemes, paths outside the roots, or URIs at all when no root is configured."""
    if not isinstance(uri, str) or not uri:
        raise RequestError(422, "invalid_request", "uri must be a non-empty string")
    if "://" in uri and not uri.startswith("file://"):
        raise RequestError(400, "uri_not_allowed", f"scheme of {uri.split('://')[0]!r} is not allowed (file only)")
    if not allowed_roots:
        raise RequestError(403, "uri_not_allowed", "reading URIs is disabled on this server (no allowed_roots); "
                                                   "upload the file instead")
    path = os.path.realpath(uri[len("file://"):] if uri.startswith("file://") else uri)
    for root in allowed_roots:
        root = os.path.realpath(root)
        if os.path.commonpath([path, root]) == root:
            return path
    raise RequestError(403, "uri_not_allowed", f"{uri} is outside the allowed roots")


def parse_dimensions(value, known: list[str]) -> list[str]:
    if value in (None, ""):
        return list(known)
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise RequestError(422, "invalid_request", "dimensions must be a list of names or 'VQ,MQ'")
    unknown = [v for v in items if v not in known]
    if unknown:
        raise RequestError(422, "unknown_dimension", f"unknown dimensions {unknown}; this model scores {known}")
    return items


def _install_handlers(app) -> None:
    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestError)
    async def _request_error(_, exc: RequestError):
        return error_response(exc.status, exc.kind, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{where or 'body'}: {err.get('msg')}")
        return error_response(422, "invalid_request", "; ".join(parts))

    @app.exception_handler(Exception)
    async def _unexpected(_, exc: Exception):  # the replica keeps serving
        return error_response(500, "internal_error", f"{type(exc).__name__}: {exc}")


# --- reward -----------------------------------------------------------------------------------------------------
def _reward_model_class():
    from ray import serve

    @serve.deployment(name="RewardModel")
    class RewardModel:
        """Holds one VideoReward; `score` calls are batched dynamically (`@serve.batch`)."""

        def __init__(self, checkpoint: str, batch_size: int = 8, batch_wait_s: float = 0.01,
                     dtype: str | None = None):
            import torch

            from raypipe.reward.model import VideoReward

            device = "cuda" if torch.cuda.is_available() else "cpu"
            self.model = VideoReward.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
            self.batch_sizes: list[int] = []
            self.score_batch.set_max_batch_size(max(1, int(batch_size)))
            self.score_batch.set_batch_wait_timeout_s(float(batch_wait_s))

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
        async def score_batch(self, frames_list: list[np.ndarray], prompts: list[str]) -> list[list[float]]:
            self.batch_sizes.append(len(frames_list))
            scores = await asyncio.to_thread(self.model.score, list(frames_list), list(prompts))
            return [row.tolist() for row in scores.numpy()]

        async def score(self, frames: np.ndarray, prompt: str) -> list[float]:
            return await self.score_batch(frames, prompt)

        def batch_history(self) -> list[int]:
            return list(self.batch_sizes)

    return RewardModel


def _reward_api_class():
    from fastapi import FastAPI, Request
    from ray import serve

    app = FastAPI(title="raypipe reward", version=__version__)
    _install_handlers(app)

    @serve.deployment(name="RewardAPI")
    @serve.ingress(app)
    class RewardAPI:
        def __init__(self, model, checkpoint: str, settings: dict):
            from raypipe.reward.scoring import checkpoint_dimensions, read_norm_stats, resolve_sampling

            self.model = model
            self.checkpoint = checkpoint
            self.settings = settings
            self.dims = list(checkpoint_dimensions(checkpoint))
            self.norm_stats = read_norm_stats(checkpoint, self.dims)
            self.sampling, _ = resolve_sampling(checkpoint, None)
            self.max_bytes = int(float(settings.get("max_upload_mb", DEFAULT_MAX_UPLOAD_MB)) * 2 ** 20)
            self.allowed_roots = list(settings.get("allowed_roots") or [])

        @app.get("/healthz")
        async def healthz(self):
            return {"status": "ok"}

        @app.get("/version")
        async def version(self, request: Request):
            check_auth(request.headers, self.settings.get("auth_token_env"))
            return {"raypipe": __version__, "app": "reward", "checkpoint": self.checkpoint, "dimensions": self.dims,
                    "normalized": self.norm_stats is not None, "max_upload_mb": self.max_bytes / 2 ** 20,
                    "uri_roots": self.allowed_roots, "sampling": vars(self.sampling)}

        @app.post("/score")
        async def score(self, request: Request):
            check_auth(request.headers, self.settings.get("auth_token_env"))
            ctype = request.headers.get("content-type", "")
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes + 64 * 1024:
                raise RequestError(413, "too_large", f"request body of {int(length)} bytes is over the "
                                                     f"{self.max_bytes} byte upload limit")
            if ctype.startswith("multipart/form-data"):
                path, prompt, dims_field = await self._from_upload(request)
                cleanup = path
            elif ctype.startswith("application/json"):
                try:
                    body = await request.json()
                except Exception:
                    raise RequestError(400, "invalid_json", "the body is not valid JSON") from None
                if not isinstance(body, dict):
                    raise RequestError(422, "invalid_request", "the JSON body must be an object")
                if "uri" not in body:
                    raise RequestError(422, "invalid_request", "missing field 'uri' (or upload a file as multipart)")
                path, prompt, dims_field, cleanup = resolve_uri(body["uri"], self.allowed_roots), \
                    body.get("prompt"), body.get("dimensions"), None
            else:
                raise RequestError(415, "unsupported_media_type", "send multipart/form-data (file + prompt) or "
                                                                  "application/json (uri + prompt)")
            try:
                if prompt is None:
                    raise RequestError(422, "invalid_request", "missing field 'prompt'")
                if not isinstance(prompt, str):
                    raise RequestError(422, "invalid_request", f"prompt must be a string, got {type(prompt).__name__}")
                dims = parse_dimensions(dims_field, self.dims)
                frames = await asyncio.to_thread(self._decode, path)
            finally:
                if cleanup:
                    Path(cleanup).unlink(missing_ok=True)
            raw = await self.model.score.remote(frames, prompt)
            return self._response(raw, dims)

        async def _from_upload(self, request):
            try:
                form = await request.form(max_files=2, max_fields=8)
            except Exception as err:
                raise RequestError(400, "invalid_multipart", f"could not parse the multipart body: {err}") from None
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise RequestError(422, "invalid_request", "missing file field 'file' (multipart upload)")
            fd, path = tempfile.mkstemp(suffix=Path(upload.filename or "upload").suffix or ".bin")
            size = 0
            try:
                with os.fdopen(fd, "wb") as f:
                    while chunk := await upload.read(1 << 20):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise RequestError(413, "too_large", f"upload is over the {self.max_bytes} byte limit")
                        f.write(chunk)
            except BaseException:
                Path(path).unlink(missing_ok=True)
                raise
            prompt = form.get("prompt")
            if prompt is not None and not isinstance(prompt, str):
                Path(path).unlink(missing_ok=True)
                raise RequestError(422, "invalid_request", "prompt must be a text field, not a file")
            return path, prompt, form.get("dimensions")

        def _decode(self, path: str) -> np.ndarray:
            from raypipe.video.decode import VideoError, decode_video

            result = decode_video(path, self.sampling)
            if isinstance(result, VideoError):
                raise RequestError(_DECODE_STATUS.get(result.kind, 422), result.kind, result.message)
            return result.frames

        def _response(self, raw: list[float], dims: list[str]) -> dict:
            from raypipe.reward.scoring import normalize, overall

            out: dict[str, Any] = {"scores": {d: raw[self.dims.index(d)] for d in dims}}
            if self.norm_stats is not None:
                norm = normalize(np.array([raw]), self.norm_stats, self.dims)[0]
                out["normalized"] = {d: float(norm[self.dims.index(d)]) for d in dims}
                out["Overall"] = float(overall(norm))
            else:
                out["normalized"], out["Overall"] = None, None
            return out

        @app.get("/batches")
        async def batches(self, request: Request):
            """Sizes of the forward passes the model replica answering this call has run (for tests/benchmarks)."""
            check_auth(request.headers, self.settings.get("auth_token_env"))
            return {"batch_sizes": await self.model.batch_history.remote()}

    return RewardAPI


def _apply(deployment, options: dict | None):
    return deployment.options(**options) if options else deployment


def reward_app(args: dict):
    """Builder for `serve run` / `serve deploy` (import path raypipe.serve.apps:reward_app). args: checkpoint,
    batch_size, batch_wait_s, max_upload_mb, allowed_roots, auth_token_env, dtype, and optional
    `deployment_options: {RewardModel: {...}, RewardAPI: {...}}` (autoscaling_config, ray_actor_options...)."""
    checkpoint = args.get("checkpoint")
    if not checkpoint or not (Path(checkpoint) / "reward_config.json").exists():
        raise ValueError(f"reward app: checkpoint {checkpoint!r} is not a VideoReward checkpoint folder")
    opts = args.get("deployment_options") or {}
    model = _apply(_reward_model_class(), opts.get("RewardModel")).bind(
        checkpoint, int(args.get("batch_size", 8)), float(args.get("batch_wait_s", 0.01)), args.get("dtype"))
    settings = {k: args.get(k) for k in ("max_upload_mb", "allowed_roots", "auth_token_env") if k in args}
    settings.setdefault("auth_token_env", "RAYPIPE_SERVE_TOKEN")
    return _apply(_reward_api_class(), opts.get("RewardAPI")).bind(model, checkpoint, settings)


# --- generate ---------------------------------------------------------------------------------------------------
def _generate_api_class():
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from pydantic import BaseModel, ConfigDict, Field, StrictInt
    from ray import serve

    app = FastAPI(title="raypipe generate", version=__version__)
    _install_handlers(app)

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        prompt: str = Field(min_length=1, max_length=1000)
        weights: dict[str, float] = Field(default_factory=dict)
        strength: float = 0.0
        seed: StrictInt = 0
        steps: StrictInt = 20
        cfg_scale: float = 4.0
        output: str = "uri"  # uri | mp4

    @serve.deployment(name="GenerateAPI")
    @serve.ingress(app)
    class GenerateAPI:
        def __init__(self, generator: str, latent_reward: str | None, lora: str | None, settings: dict):
            from raypipe.nrg.generate import latent_shape, load_generator
            from raypipe.nrg.model import LatentReward

            dtype = settings.get("dtype") or "float32"
            self.gen = load_generator(generator, lora, settings.get("device") or "auto", dtype)
            self.model = LatentReward.from_pretrained(latent_reward, dtype=dtype, device=str(self.gen.device)) \
                if latent_reward else None
            self.settings = settings
            clip = settings.get("clip") or {}
            self.frames, self.height, self.width = (int(clip.get("frames", 9)), int(clip.get("height", 32)),
                                                    int(clip.get("width", 32)))
            self.shape = latent_shape(self.gen, self.frames, self.height, self.width)
            self.max_steps = int(settings.get("max_steps", 50))
            self.max_strength = float(settings.get("max_strength", 100.0))
            self.max_weight = float(settings.get("max_weight", 10.0))
            self.out = Path(settings.get("output_dir") or tempfile.mkdtemp(prefix="raypipe-generate-"))
            self.out.mkdir(parents=True, exist_ok=True)
            self.info = {"generator": generator, "latent_reward": latent_reward, "lora": lora}
            self.lock = asyncio.Lock()

        @app.get("/healthz")
        async def healthz(self):
            return {"status": "ok"}

        @app.get("/version")
        async def version(self, request: Request):
            check_auth(request.headers, self.settings.get("auth_token_env"))
            return {"raypipe": __version__, "app": "generate", **self.info,
                    "dimensions": list(self.model.dims) if self.model else [], "max_steps": self.max_steps,
                    "max_strength": self.max_strength, "clip": [self.frames, self.height, self.width]}

        @app.post("/")
        async def generate(self, request: Request, body: GenerateRequest):
            check_auth(request.headers, self.settings.get("auth_token_env"))
            weights = self._validate(body)
            async with self.lock:  # one sampling at a time per replica (autoscaling adds replicas)
                result = await asyncio.to_thread(self._sample, body, weights)
            return result if body.output == "uri" else Response(
                content=Path(result["uri"]).read_bytes(), media_type="video/mp4",
                headers={"X-Latent-Rewards": __import__("json").dumps(result["latent_rewards"])})

        def _validate(self, body) -> dict[str, float]:
            if not 1 <= body.steps <= self.max_steps:
                raise RequestError(422, "too_many_steps" if body.steps > self.max_steps else "invalid_request",
                                   f"steps must be in [1, {self.max_steps}], got {body.steps}")
            if not 0.0 <= body.strength <= self.max_strength or not np.isfinite(body.strength):
                raise RequestError(422, "out_of_range", f"strength must be in [0, {self.max_strength}]")
            if not 1.0 <= body.cfg_scale <= 20.0:
                raise RequestError(422, "out_of_range", "cfg_scale must be in [1, 20]")
            if body.output not in ("uri", "mp4"):
                raise RequestError(422, "invalid_request", "output must be 'uri' or 'mp4'")
            dims = list(self.model.dims) if self.model else []
            unknown = [d for d in body.weights if d not in dims]
            if unknown:
                raise RequestError(422, "unknown_dimension", f"unknown dimensions {unknown}; the latent reward "
                                                             f"model has {dims}")
            bad = {d: w for d, w in body.weights.items() if not np.isfinite(w) or abs(w) > self.max_weight}
            if bad:
                raise RequestError(422, "out_of_range", f"weights must be finite and in [-{self.max_weight}, "
                                                        f"{self.max_weight}], got {bad}")
            if body.strength and any(body.weights.values()) and self.model is None:
                raise RequestError(422, "guidance_unavailable", "this server has no latent reward model")
            return {d: float(body.weights.get(d, 0.0)) for d in dims}

        def _sample(self, body, weights: dict[str, float]) -> dict:
            import uuid

            from raypipe.nrg.generate import guided_samples
            from raypipe.video.encode import write_mp4

            res = guided_samples(self.gen, self.model, [body.prompt], weights, body.strength, body.seed, body.steps,
                                 body.cfg_scale, self.shape)
            path = self.out / f"{uuid.uuid4().hex}.mp4"
            write_mp4(res["videos"][0], path, float(self.settings.get("fps", 8.0)))
            rewards = None
            if res["latent_rewards"] is not None:
                rewards = {d: float(v) for d, v in zip(self.model.dims, res["latent_rewards"][0])}
            return {"uri": str(path), "latent_rewards": rewards, "weights": weights, "strength": body.strength,
                    "seed": body.seed, "steps": body.steps, "sample_s": round(res["sample_s"], 3)}

    return GenerateAPI


def generate_app(args: dict):
    """Builder (import path raypipe.serve.apps:generate_app). args: generator, latent_reward, lora, max_steps,
    max_strength, max_weight, clip {frames, height, width}, output_dir, fps, auth_token_env,
    deployment_options {GenerateAPI: {...}}."""
    generator = args.get("generator")
    if not generator or not Path(generator).exists():
        raise ValueError(f"generate app: generator {generator!r} is not a folder")
    settings = {k: v for k, v in args.items() if k not in ("generator", "latent_reward", "lora",
                                                           "deployment_options")}
    settings.setdefault("auth_token_env", "RAYPIPE_SERVE_TOKEN")
    opts = (args.get("deployment_options") or {}).get("GenerateAPI")
    return _apply(_generate_api_class(), opts).bind(generator, args.get("latent_reward"), args.get("lora"), settings)
