"""App factory: settings, model hub, routes, error shape, metrics middleware, lifespan (load, drain)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__, gc_tuning
from service.docs_ui import install_docs
from service.errors import PayloadTooLarge, ServiceError, error_body, is_oip_path
from service.families import description, plugins
from service.landing import router as landing_router
from service.metrics import Metrics
from service.oip.fastpath import InferFastPath
from service.oip.routes import repository_router
from service.oip.routes import router as oip_router
from service.oip.stats import router as stats_router
from service.openapi import install_openapi
from service.repository import ModelHub
from service.rollouts.controller import RolloutController
from service.rollouts.middleware import RolloutMiddleware
from service.rollouts.routes import router as rollouts_router
from service.runtimes import resolve_device
from service.runtimes.torchscript import apply_process_settings
from service.settings import Settings
from service.workpool import WorkPool

log = logging.getLogger(__name__)
LOOP_LAG_INTERVAL_S = 0.05


def error_response(request: Request, status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """Task endpoints: {"error": {"code", "message", "details"}}; OIP routes: {"error": "message"}, and a request
    the server rejects there is a 400, as Triton and KServe answer it (task endpoints keep 422)."""
    if status == 422 and is_oip_path(request.url.path):
        status = 400
    return JSONResponse(error_body(request.url.path, code, message, details), status_code=status, headers=headers)


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(request, exc.status_code, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(request, 400, "bad_request", "request body is not valid JSON: "
                                  + _describe_validation(errors))
        safe = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
        return error_response(request, 422, "invalid_input", _describe_validation(errors), safe)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, PayloadTooLarge):
            cause = exc.__cause__
            return error_response(request, cause.status_code, cause.code, cause.message)
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
        return error_response(request, exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        # Safety net for JSON parsed with the stdlib anywhere: deep nesting is the client's input, not a fault.
        return error_response(request, 400, "bad_request", "request body is nested too deeply")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(request, 500, "internal", f"internal error ({type(exc).__name__})")


class ServiceMiddleware:
    """Pure ASGI (keeps streaming and disconnect signals intact): payload bound, in-flight gauge, end-to-end
    latency histogram per endpoint/model/version, and clean-up of the per-request disconnect watcher."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body: int, replica: str = "") -> None:
        self.app = app
        self.replica = (replica or f"{socket.gethostname()}:{os.getpid()}").encode()  # X-Replica
        self.metrics = metrics
        self.max_body = max_body
        # Histogram children by label values. Bounded: endpoints are route templates (or "unmatched"), models
        # and versions are the loaded ones, methods and codes are few.
        self._series: dict[tuple, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._stamp(send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await _plain_error(scope, send, 413, "payload_too_large",
                               f"request body of {int(declared)} bytes exceeds the limit of {self.max_body} bytes")
            return
        seen = 0
        over_limit = f"request body exceeds the limit of {self.max_body} bytes"
        tripped = False  # the body grew past the limit while the app read it (chunked: no Content-Length)
        replaced = False  # the app's answer was swapped for the 413

        async def bounded_receive() -> Message:
            nonlocal seen, tripped
            if tripped:  # a handler that swallowed the error reads no further
                raise PayloadTooLarge(over_limit)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    tripped = True
                    raise PayloadTooLarge(over_limit)
            return message

        status = {"code": 500}

        async def tracking_send(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return  # the rest of the app's (replaced) answer
            if message["type"] == "http.response.start":
                if tripped and message["status"] != 413:
                    # Whatever a handler made of the body-size error (a broad `except` around a form parser
                    # answers 400), an oversized body is 413 on every route, whatever the transfer encoding.
                    replaced = True
                    status["code"] = 413
                    await _plain_error(scope, send, 413, "payload_too_large", over_limit)
                    return
                if tripped:  # the rest of an oversized body is never read: the connection cannot be reused
                    message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
                status["code"] = message["status"]
            await send(message)

        started = time.perf_counter()
        # Deadlines (X-Request-Timeout-Ms) count from arrival, not from when a handler asks for them.
        scope.setdefault("state", {})["arrived_at"] = time.monotonic()
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, bounded_receive, tracking_send)
        finally:
            self.metrics.in_flight.dec()
            state = scope.get("state", {})
            watch = state.get("disconnect_watch")
            if watch is not None:
                watch.cancel()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            key = (endpoint, scope["method"], status["code"], state.get("model_name", ""),
                   state.get("model_version", ""))
            series = self._series.get(key)
            if series is None:  # labels() costs a lock and a kwargs walk: once per series, not per request
                series = self._series[key] = self.metrics.request_duration.labels(
                    endpoint=key[0], method=key[1], code=str(key[2]), model=key[3], version=key[4], protocol="http")
            series.observe(time.perf_counter() - started)

    def _stamp(self, send: Send) -> Send:
        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-replica", self.replica)]
            await send(message)
        return stamped


class ServiceApp(FastAPI):
    """FastAPI whose front is ServiceMiddleware (body bound, in-flight, latency) and the OIP infer fast path.

    Profiled at concurrency 64 (the smallest model), FastAPI's own __call__ (its OpenTelemetry provider checks read
    os.environ on every request), Starlette's error middlewares and routing took about 40 % of the event loop
    for the hottest route; `POST .../infer` now reaches its handler from here, every other request goes
    through FastAPI unchanged, with the same middleware in front.
    """

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is None or scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self  # what Request.app and the fast path's exception handlers read
        await self.front(scope, receive, send)

    async def routed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Everything but the fast path: FastAPI's full stack."""
        await super().__call__(scope, receive, send)


async def _plain_error(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    payload = json.dumps(error_body(scope["path"], code, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


async def watch_loop_lag(metrics: Metrics, interval_s: float = LOOP_LAG_INTERVAL_S) -> None:
    """Observe how late a fixed-interval sleep wakes: anything blocking the loop shows up as lag."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        metrics.loop_lag.observe(max(0.0, loop.time() - due))


def create_app(settings: Settings | None = None, *, grpc_listen: tuple[str, int] | None = None) -> FastAPI:
    """The app; with `grpc_listen` (host, port), its lifespan also serves gRPC on that address (service/grpc)."""
    settings = settings or Settings()
    metrics = Metrics()
    families = plugins()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        apply_process_settings(settings.cpu_threads)
        gc_tuning.apply_thresholds(gc_tuning.parse_thresholds(settings.gc_thresholds))
        metrics.gc_pauses.install()
        if settings.gc_freeze:
            gc_tuning.freeze("start-up")  # imports and the app; each model load freezes again (repository.py)
        hub = ModelHub(settings, metrics, families, resolve_device(settings.device))
        app.state.hub = hub
        app.state.workpool = WorkPool(metrics, workers=settings.work_threads, max_pending=settings.max_pending_work)
        rollouts.attach(hub, app.state.workpool)  # rollouts: the automatic policy and shadow copies need them
        grpc_server = None
        if grpc_listen is not None:  # `python -m service` only: Ray replicas and in-process apps serve HTTP alone
            from service.grpc.server import GrpcServer  # grpcio is imported only where gRPC is served

            grpc_server = app.state.grpc = GrpcServer(app, *grpc_listen, grace_s=settings.graceful_timeout_s)
            await grpc_server.start()
        # Load in the background so that liveness answers at once; readiness waits for warm-up.
        loading = asyncio.get_running_loop().create_task(hub.start())
        lag_watch = asyncio.get_running_loop().create_task(watch_loop_lag(metrics))
        try:
            yield
        finally:
            lag_watch.cancel()
            if not loading.done():
                loading.cancel()
            if grpc_server is not None:  # calls in flight finish (the SIGTERM handler already stopped new ones)
                await grpc_server.stop()
            await rollouts.close()  # shadow copies and policy loops stop before the versions drain
            await hub.shutdown()
            app.state.workpool.shutdown()
            metrics.gc_pauses.uninstall()

    app = ServiceApp(
        title="Research model inference service",
        version=__version__,
        description=description(),  # from the families' declarations (service/families)
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry checks the global providers on every request; off unless asked for.
        telemetry=None if settings.otel_telemetry else {"tracing": False, "metrics": False, "logs": False},
        docs_url=None, redoc_url=None,  # service/docs_ui.py: the same pages with assets served from here
    )
    app.state.settings = settings
    app.state.metrics = metrics
    rollouts = app.state.rollouts = RolloutController(metrics)  # service/rollouts: shadow / canary / promote
    install_error_handlers(app)
    install_openapi(app, families)  # error statuses and shapes, examples from the served versions
    install_docs(app, settings)  # /docs and /redoc without a CDN
    app.include_router(landing_router)  # / : models and their states, links
    app.include_router(stats_router)  # before oip_router: /v2/models/stats is not a model named "stats"
    app.include_router(oip_router)
    app.include_router(repository_router)
    app.include_router(rollouts_router)  # /admin/rollouts/{model}
    for family in families.values():
        if family.router is not None:
            app.include_router(family.router)

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(metrics.page.render(), media_type=CONTENT_TYPE_LATEST)

    # In front of FastAPI: the fast path and the routed path share the body bound, metrics and errors.
    # RolloutMiddleware: X-Model-Version on every answer, and the rollouts' live figures and shadow copies.
    app.front = ServiceMiddleware(RolloutMiddleware(InferFastPath(app.routed), rollouts), metrics=metrics,
                                  max_body=settings.max_request_bytes, replica=settings.replica_name)
    return app
