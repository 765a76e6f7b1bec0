"""The front of the HTTP app: `ServiceMiddleware` (body bound, in-flight gauge, latency histogram, X-Replica)
and `ServiceApp`, the FastAPI whose requests go through it and the OIP infer fast path first."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, error_body
from service.metrics import Metrics


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
            ctx = state.get("inference_context")
            if ctx is not None:
                ctx.stop_watching()
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

    Profiled at concurrency 64 (tiny model), FastAPI's own __call__ (its OpenTelemetry provider checks read
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
