"""The reward app's deployments: `RewardModel` (one VideoReward per replica, `@serve.batch` dynamic batching) and
its ingress `RewardAPI` (`POST /score`: validation, auth, upload limits, decoding with the checkpoint's sampling)."""
# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations (Request) at definition time.

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request
from ray import serve

from raypipe.serve.config import RewardAppConfig
from raypipe.serve.ingress import Ingress, RequestError, ingress_app, parse_dimensions, resolve_uri

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


app = ingress_app("raypipe reward")


@serve.deployment(name="RewardAPI")
@serve.ingress(app)
class RewardAPI(Ingress):
    """`POST /score`: a video (multipart upload, or JSON `{"uri"}` under the allowed roots) and a prompt ->
    per-dimension scores, normalised ones and Overall when the checkpoint has norm stats."""

    app_name = "reward"

    def __init__(self, model, cfg: RewardAppConfig):
        from raypipe.reward.scoring import checkpoint_dimensions, read_norm_stats, resolve_sampling

        self.model = model
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
        fd, path = tempfile.mkstemp(suffix=Path(upload.filename or "upload").suffix or ".bin")
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

    def _check_fields(self, prompt, dims_field) -> list[str]:
        if prompt is None:
            raise RequestError(422, "invalid_request", "missing field 'prompt'")
        if not isinstance(prompt, str):
            raise RequestError(422, "invalid_request", f"prompt must be a string, got {type(prompt).__name__}")
        return parse_dimensions(dims_field, self.dims)

    def _decode(self, path: str) -> np.ndarray:
        from raypipe.video.decode import VideoError, decode_video

        result = decode_video(path, self.sampling)
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
