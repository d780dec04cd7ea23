"""The HTTP API: ``/health``, ``/model`` (GET: metadata; POST: swap), ``/predict`` (a raw ASGI
handler FastAPI never sees, see :mod:`~edgecompress.serve.predict`), ``/metrics``, ``/events``.
Every client error is a JSON ``{"error": ..., "status": ...}`` that says what was
wrong; an unexpected failure inside a request is a 500 for that request, never a dead server.
"""

from __future__ import annotations

import hmac
import shutil
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import EdgeCompressError
from .config import ServeConfig
from .health import health
from .inputs import RequestError, media_type
from .predict import PredictEndpoint
from .state import ServerState, build_state

log = logging.getLogger("edgecompress")


def _error(status: int, message: str, headers: dict[str, str] | None = None,
           **detail: Any) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, **detail}, status_code=status,
                        headers=headers)


def _check_declared_size(request: Request, limit_bytes: int) -> None:
    """Model uploads must say their size up front; the multipart parser then spools to disk."""
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        raise RequestError(411, "POST /model needs a Content-Length header")
    if int(declared) > limit_bytes:
        raise RequestError(413, f"upload of {int(declared):,} bytes exceeds the limit of "
                                f"{limit_bytes:,} bytes", limit_bytes=limit_bytes)


def _authorised(request: Request, token: str) -> bool:
    given = request.headers.get("authorization", "")
    given = given[7:] if given.lower().startswith("bearer ") else request.headers.get("x-token", "")
    return hmac.compare_digest(given.encode(), token.encode())


async def _save_upload(form: Any, folder: Path) -> Path:
    upload = form.get("artifact")
    if upload is None or isinstance(upload, str) or not upload.filename:
        raise RequestError(400, "the multipart form needs the artifact file in a field named "
                                "'artifact' (optional: 'sidecar', 'check', 'sha256')")
    name = Path(upload.filename).name  # never a path the client chose
    if not name or name.startswith("."):
        raise RequestError(400, f"bad artifact file name {upload.filename!r}")
    target = folder / name
    parts = [(upload, target)]
    for field, suffix in (("sidecar", ".json"), ("check", ".check.npz")):
        part = form.get(field)
        if part is not None and not isinstance(part, str):
            parts.append((part, folder / (name + suffix)))
    for part, path in parts:  # the parser spooled them to disk; copy without reading them whole
        with open(path, "wb") as fh:
            await run_in_threadpool(shutil.copyfileobj, part.file, fh, 1 << 20)
    return target


ENDPOINTS = frozenset({"/health", "/model", "/predict", "/metrics", "/events"})


class CountRequests:
    """Pure ASGI middleware counting responses by endpoint and status (Starlette's
    ``BaseHTTPMiddleware`` costs more per request than a small model's inference). Unknown paths
    share one label, so a scan of random URLs cannot grow the metrics without bound."""

    def __init__(self, app: Any, metrics: Any):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"] if scope["path"] in ENDPOINTS else "other"
            self.metrics.requests.labels(path, str(status[0])).inc()


class ServeApp(FastAPI):
    """FastAPI, except that ``/predict`` goes straight to its raw ASGI handler (no telemetry
    check, middleware or routing per request); every other path is FastAPI's."""

    def __init__(self, predict: PredictEndpoint, **kwargs: Any):
        super().__init__(**kwargs)
        self.predict = predict

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/predict":
            await self.predict(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(config: ServeConfig, state: ServerState | None = None) -> ServeApp:
    """The FastAPI application serving ``config.artifact`` (the model is loaded and verified
    here, before the server accepts a connection)."""
    s = state or build_state(config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        s.start()
        try:
            yield
        finally:
            s.stop()

    app = ServeApp(PredictEndpoint(s), title="edgecompress serve", lifespan=lifespan)
    app.state.server = s

    app.add_middleware(CountRequests, metrics=s.metrics)
    _add_error_handlers(app, s)
    _add_info_routes(app, s)
    _add_swap_route(app, s)
    return app


def _add_error_handlers(app: FastAPI, s: ServerState) -> None:
    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # one request's failure is that request's 500; the server carries on
        log.error("request %s %s failed: %r", request.method, request.url.path, exc)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        s.metrics.errors.labels(request.url.path, str(exc.status)).inc()
        s.stats.add(None, error=True)
        return _error(exc.status, exc.message, **exc.detail)


def _add_info_routes(app: FastAPI, s: ServerState) -> None:
    @app.get("/health")
    async def get_health() -> dict[str, Any]:
        await s.refresh()
        return await run_in_threadpool(health, s)

    @app.get("/model")
    async def get_model() -> dict[str, Any]:
        await s.refresh()
        return {**s.slot.current.describe(), **s.slot.describe()}

    @app.get("/events")
    async def get_events(kind: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return await run_in_threadpool(s.events.query, kind, None, min(max(1, limit), 1000))

    @app.get("/metrics")
    async def get_metrics() -> Response:
        await s.refresh()
        return Response(await run_in_threadpool(s.metrics.render), media_type=CONTENT_TYPE_LATEST)


def _add_swap_route(app: FastAPI, s: ServerState) -> None:
    @app.post("/model")
    async def post_model(request: Request) -> JSONResponse:
        if s.config.token is None:
            raise RequestError(403, "model swapping is disabled: start the server with "
                                    "--token-file FILE or EDGECOMPRESS_SERVE_TOKEN set")
        if not _authorised(request, s.config.token):
            raise RequestError(401, "missing or wrong token: send 'Authorization: Bearer TOKEN'")
        _check_declared_size(request, int(s.config.max_model_mb * 1024 * 1024))
        if media_type(request.headers.get("content-type")) != "multipart/form-data":
            raise RequestError(415, "POST /model takes multipart/form-data with the file in "
                                    "field 'artifact'")
        form = await request.form(max_part_size=64 * 1024 * 1024)
        with s.slot.store.staging() as folder:
            path = await _save_upload(form, folder)
            sha = form.get("sha256")
            try:
                new = await run_in_threadpool(s.slot.swap, path,
                                              sha if isinstance(sha, str) else None, "upload")
            except (EdgeCompressError, OSError, ValueError) as exc:
                return _error(422, f"the new model was refused and version "
                                   f"{s.slot.primary.version} keeps serving: {exc}",
                              rolled_back=True, serving_version=s.slot.primary.version)
        return JSONResponse({"swapped": True, **new.describe()})
