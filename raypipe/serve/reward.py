"""The reward app's deployments: `RewardModel` (one VideoReward per replica, `@serve.batch` dynamic batching), an
optional `CriticModel` (one LiFT critic per replica, batched generation) and the ingress `RewardAPI` (`POST /score`,
`POST /critique`: validation, auth, upload limits, decoding with each checkpoint's sampling)."""
# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations (Request) at definition time.

import asyncio
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request
from ray import serve

from raypipe.serve.config import RewardAppConfig
from raypipe.serve.ingress import MAX_PROMPT_CHARS, Ingress, RequestError, ingress_app, parse_dimensions, resolve_uri

# decode failures -> HTTP status: not a video at all 415, too large 413, a video we cannot use 422
DECODE_STATUS = {
    "not_a_video": 415,
    "unsupported_codec": 415,
    "too_large": 413,
    "empty": 422,
    "corrupt": 422,
    "too_short": 422,
    "missing": 404,
    "io_error": 422,
}
# multipart framing on top of the file itself, allowed over the upload limit in Content-Length
MULTIPART_OVERHEAD_BYTES = 64 * 1024
UPLOAD_CHUNK_BYTES = 1 << 20


@serve.deployment(name="RewardModel")
class RewardModel:
    """Holds one VideoReward; `score` calls are batched dynamically (`@serve.batch`)."""

    def __init__(
        self,
        reward: str,
        batch: int = 8,
        batch_wait_s: float = 0.01,
        dtype: str | None = None,
        options: dict | None = None,
    ):
        import torch

        from raypipe.reward.model import VideoReward

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = VideoReward.from_pretrained(reward, dtype=dtype, device=device, **(options or {})).eval()
        self.batch_sizes: list[int] = []
        self.score_batch.set_max_batch_size(max(1, int(batch)))
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


@serve.deployment(name="CriticModel")
class CriticModel:
    """Holds one LiFT critic; `answer` calls (one per video and dimension) are generated in dynamic batches."""

    def __init__(self, critic: str, batch: int = 8, batch_wait_s: float = 0.01, dtype: str | None = None):
        import torch

        from raypipe.critic.model import Critic

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = Critic.from_pretrained(critic, dtype=dtype, device=device)
        self.answer_batch.set_max_batch_size(max(1, int(batch)))
        self.answer_batch.set_batch_wait_timeout_s(float(batch_wait_s))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def answer_batch(self, frames_list: list[np.ndarray], prompts: list[str], dims: list[str]) -> list[str]:
        return await asyncio.to_thread(self.model.answer, list(frames_list), list(prompts), list(dims))

    async def answer(self, frames: np.ndarray, prompt: str, dim: str) -> str:
        return await self.answer_batch(frames, prompt, dim)


def critique_response(dims: list[str], answers: list[str], all_dims: list[str], weight_map=None) -> dict:
    """Ratings, reasons and raw answers per dimension; an answer that does not start with a rating is reported
    under `errors` with a null rating (never a silent Good); `lift_weight` when every dimension was rated."""
    from raypipe.data.ratings import AnswerError, lift_weight, parse_answer

    out: dict[str, Any] = {"ratings": {}, "reasons": {}, "answers": dict(zip(dims, answers)), "errors": {}}
    for dim, text in zip(dims, answers):
        try:
            out["ratings"][dim], out["reasons"][dim] = parse_answer(text)
        except AnswerError as e:
            out["ratings"][dim], out["reasons"][dim] = None, None
            out["errors"][dim] = {"error": AnswerError.kind, "message": str(e)}
    complete = sorted(dims) == sorted(all_dims)
    out["lift_weight"] = lift_weight(out["ratings"], weight_map) if complete else None
    return out


app = ingress_app("raypipe reward")


@serve.deployment(name="RewardAPI")
@serve.ingress(app)
class RewardAPI(Ingress):
    """`POST /score`: a video (multipart upload, or JSON `{"uri"}` under the allowed roots) and a prompt ->
    per-dimension scores, normalised ones and Overall when the checkpoint has norm stats."""

    app_name = "reward"

    def __init__(self, model, cfg: RewardAppConfig, critic=None):
        from raypipe.reward.scoring import checkpoint_dimensions, read_norm_stats, resolve_sampling

        self.model, self.critic = model, critic
        if critic is not None:
            from raypipe.critic.model import critic_dimensions

            self.critic_dims = critic_dimensions(cfg.critic)
            self.critic_sampling, _ = resolve_sampling(cfg.critic, None)
            self.critic_path, self.weight_map = cfg.critic, cfg.weight_map
        self.checkpoint = cfg.reward
        self.auth_token_env = cfg.auth_token_env
        self.dims = list(checkpoint_dimensions(cfg.reward))
        self.norm_stats = read_norm_stats(cfg.reward, self.dims)
        self.sampling, _ = resolve_sampling(cfg.reward, None)
        self.max_bytes = int(float(cfg.max_upload_mb) * 2**20)
        self.allowed_roots = list(cfg.allowed_roots)

    def version_info(self) -> dict:
        return {
            "checkpoint": self.checkpoint,
            "dimensions": self.dims,
            "normalized": self.norm_stats is not None,
            "max_upload_mb": self.max_bytes / 2**20,
            "uri_roots": self.allowed_roots,
            "sampling": vars(self.sampling),
            "critic": None if self.critic is None else {"checkpoint": self.critic_path, "dimensions": self.critic_dims},
        }

    @app.post("/score")
    async def score(self, request: Request):
        self.authorize(request)
        self._check_length(request)
        path, prompt, dims_field, cleanup = await self._read_body(request)
        try:
            dims = self._check_fields(prompt, dims_field)
            frames = await asyncio.to_thread(self._decode, path)
        finally:
            if cleanup:
                Path(cleanup).unlink(missing_ok=True)
        raw = await self.model.score.remote(frames, prompt)
        return self._response(raw, dims)

    @app.post("/critique")
    async def critique(self, request: Request):
        """A video and a prompt (as for /score) -> the critic's rating and reason per dimension, and lift_weight."""
        self.authorize(request)
        if self.critic is None:
            raise RequestError(404, "no_critic", "this server has no critic: start it with --critic CHECKPOINT")
        self._check_length(request)
        path, prompt, dims_field, cleanup = await self._read_body(request)
        try:
            dims = self._check_fields(prompt, dims_field, self.critic_dims)
            frames = await asyncio.to_thread(self._decode, path, self.critic_sampling)
        finally:
            if cleanup:
                Path(cleanup).unlink(missing_ok=True)
        answers = await asyncio.gather(*[self.critic.answer.remote(frames, prompt, d) for d in dims])
        return critique_response(dims, list(answers), self.critic_dims, self.weight_map)

    @app.get("/batches")
    async def batches(self, request: Request):
        """Sizes of the forward passes the model replica answering this call has run (for tests/benchmarks)."""
        self.authorize(request)
        return {"batch_sizes": await self.model.batch_history.remote()}

    def _check_length(self, request) -> None:
        """Refuse a body whose declared length is over the limit before reading any of it."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes + MULTIPART_OVERHEAD_BYTES:
            raise RequestError(
                413, "too_large", f"request body of {int(length)} bytes is over the {self.max_bytes} byte upload limit"
            )

    async def _read_body(self, request) -> tuple[str, Any, Any, str | None]:
        """(video path, prompt, dimensions field, temp file to delete afterwards) from either kind of body."""
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            path, prompt, dims_field = await self._from_upload(request)
            return path, prompt, dims_field, path
        if ctype.startswith("application/json"):
            return (*await self._from_json(request), None)
        raise RequestError(
            415, "unsupported_media_type", "send multipart/form-data (file + prompt) or application/json (uri + prompt)"
        )

    async def _from_json(self, request) -> tuple[str, Any, Any]:
        try:
            body = await request.json()
        except Exception:
            raise RequestError(400, "invalid_json", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise RequestError(422, "invalid_request", "the JSON body must be an object")
        if "uri" not in body:
            raise RequestError(422, "invalid_request", "missing field 'uri' (or upload a file as multipart)")
        return resolve_uri(body["uri"], self.allowed_roots), body.get("prompt"), body.get("dimensions")

    async def _from_upload(self, request) -> tuple[str, Any, Any]:
        try:
            form = await request.form(max_files=2, max_fields=8)
        except Exception as err:
            raise RequestError(400, "invalid_multipart", f"could not parse the multipart body: {err}") from None
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise RequestError(422, "invalid_request", "missing file field 'file' (multipart upload)")
        path = await self._save_upload(upload)
        prompt = form.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            Path(path).unlink(missing_ok=True)
            raise RequestError(422, "invalid_request", "prompt must be a text field, not a file")
        return path, prompt, form.get("dimensions")

    async def _save_upload(self, upload) -> str:
        """The uploaded file in a temp file, read in chunks so an oversize upload stops at the limit."""
        suffix = Path(str(upload.filename or "upload")).suffix.lower()
        if not re.fullmatch(r"\.[a-z0-9]{1,8}", suffix):  # a client's file name never reaches the filesystem as is
            suffix = ".bin"
        fd, path = tempfile.mkstemp(suffix=suffix)
        size = 0
        try:
            with os.fdopen(fd, "wb") as f:
                while chunk := await upload.read(UPLOAD_CHUNK_BYTES):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise RequestError(413, "too_large", f"upload is over the {self.max_bytes} byte limit")
                    f.write(chunk)
        except BaseException:
            Path(path).unlink(missing_ok=True)
            raise
        return path

    def _check_fields(self, prompt, dims_field, known: list[str] | None = None) -> list[str]:
        if prompt is None:
            raise RequestError(422, "invalid_request", "missing field 'prompt'")
        if not isinstance(prompt, str):
            raise RequestError(422, "invalid_request", f"prompt must be a string, got {type(prompt).__name__}")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise RequestError(422, "invalid_request", f"prompt is over {MAX_PROMPT_CHARS} characters")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON): no tokenizer takes it
            raise RequestError(422, "invalid_request", "prompt is not valid Unicode text (a lone surrogate)") from None
        return parse_dimensions(dims_field, known or self.dims)

    def _decode(self, path: str, sampling=None) -> np.ndarray:
        from raypipe.video.decode import VideoError, decode_video

        result = decode_video(path, sampling or self.sampling)
        if isinstance(result, VideoError):
            raise RequestError(DECODE_STATUS.get(result.kind, 422), result.kind, result.message)
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
