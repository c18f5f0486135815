"""What the two ingress deployments share: request errors as 4xx JSON, bearer auth, URI and dimension checks, and
`ingress_app` with `/healthz` (open) and `/version` (behind the token), answered by the `Ingress` base class."""
# No `from __future__ import annotations` here: FastAPI reads the endpoint annotations (Request) at definition time.

import hmac
import os

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from raypipe import __version__

MAX_URI_CHARS = 4096
MAX_PROMPT_CHARS = 4096  # a prompt is a sentence or a paragraph; past this it is refused, not tokenised


class RequestError(Exception):
    """A bad request: answered with `status` and the JSON `{"error": kind, "message": message}`."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def error_response(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": kind, "message": message})


def check_auth(headers, token_env: str | None) -> None:
    """Bearer token from the env var `token_env` (unset or empty: no auth)."""
    token = os.environ.get(token_env or "", "")
    if not token:
        return
    given = headers.get("authorization", "")
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), f"Bearer {token}".encode()):  # constant time
        raise RequestError(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer <token>)")


def resolve_uri(uri: str, allowed_roots: list[str]) -> str:
    """A local path or file:// URI inside one of `allowed_roots` (after resolving symlinks and ..); anything else
    is refused: other schemes, paths outside the roots, or URIs at all when no root is configured."""
    if not isinstance(uri, str) or not uri:
        raise RequestError(422, "invalid_request", "uri must be a non-empty string")
    if "\x00" in uri or len(uri) > MAX_URI_CHARS:
        raise RequestError(422, "invalid_request", f"uri must be at most {MAX_URI_CHARS} characters without NUL")
    if "://" in uri and not uri.startswith("file://"):
        raise RequestError(400, "uri_not_allowed", f"scheme of {uri.split('://')[0]!r} is not allowed (file only)")
    if not allowed_roots:
        raise RequestError(
            403,
            "uri_not_allowed",
            "reading URIs is disabled on this server (no allowed_roots); upload the file instead",
        )
    path = os.path.realpath(uri[len("file://") :] if uri.startswith("file://") else uri)
    for root in allowed_roots:
        root = os.path.realpath(root)
        if os.path.commonpath([path, root]) == root:
            return path
    raise RequestError(403, "uri_not_allowed", f"{uri} is outside the allowed roots")


def parse_dimensions(value, known: list[str]) -> list[str]:
    """The dimensions a request asks for (a list or "VQ,MQ"; missing: all of `known`)."""
    if value in (None, ""):
        return list(known)
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise RequestError(422, "invalid_request", "dimensions must be a list of names or 'VQ,MQ'")
    unknown = [v for v in items if v not in known]
    if unknown:
        raise RequestError(422, "unknown_dimension", f"unknown dimensions {unknown}; this model scores {known}")
    return items


async def _request_error(_, exc: RequestError):
    return error_response(exc.status, exc.kind, exc.message)


async def _validation_error(_, exc: RequestValidationError):
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{where or 'body'}: {err.get('msg')}")
    return error_response(422, "invalid_request", "; ".join(parts))


async def _unexpected_error(_, exc: Exception):  # a 500 JSON, and the replica keeps serving
    return error_response(500, "internal_error", f"{type(exc).__name__}: {exc}")


class Ingress:
    """Base of the ingress deployments: a subclass sets `app_name` and `auth_token_env` and says what its
    `/version` reports in `version_info`."""

    app_name = ""
    auth_token_env: str | None = None

    def authorize(self, request: Request) -> None:
        check_auth(request.headers, self.auth_token_env)

    def version_info(self) -> dict:
        return {}

    def version(self, request: Request) -> dict:
        self.authorize(request)
        return {"raypipe": __version__, "app": self.app_name, **self.version_info()}


def _this_replica() -> Ingress:
    from ray import serve

    return serve.get_replica_context().servable_object


def ingress_app(title: str) -> FastAPI:
    """A FastAPI app with the 4xx/500 JSON error handlers, `GET /healthz` (open) and `GET /version` (the `Ingress`
    replica answering); pass it to `serve.ingress` on an `Ingress` subclass."""
    app = FastAPI(title=title, version=__version__)
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)

    # Plain routes, not class methods: Serve's class-based view would rebind a method shared by two apps.
    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/version")
    async def version(request: Request):
        return _this_replica().version(request)

    return app
