"""What a model family plugs into the service: task routes and an asset-loading hook."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request

from service.batching import RequestContext
from service.errors import BadRequest, InvalidInput

if TYPE_CHECKING:
    from service.repository import LoadedVersion, ModelHub

TIMEOUT_HEADER = "x-request-timeout-ms"


class Family:
    """Base class; subclasses live in `service/families/<name>/__init__.py` as `FAMILY = MyFamily()`."""

    name: str = ""

    def router(self) -> APIRouter | None:
        """Task endpoints of this family (None: reachable through /v2 only)."""
        return None

    def prepare(self, version: LoadedVersion) -> None:
        """Load assets into `version.state` and register procedures; runs in a worker thread before warm-up."""


def hub_of(request: Request) -> ModelHub:
    return request.app.state.hub


def resolve_version(request: Request, *, family: str, model: str | None = None,
                    version: int | None = None) -> LoadedVersion:
    """The served version of `model` (default: the model named like the family) and record it for metrics."""
    loaded = hub_of(request).get(model or family, version)
    if loaded.manifest.family != family:
        raise InvalidInput(f"model {loaded.name!r} is a {loaded.manifest.family!r} model, not {family!r}")
    request.state.model_name = loaded.name
    request.state.model_version = str(loaded.version)
    return loaded


def request_context(request: Request) -> RequestContext:
    """Deadline from `X-Request-Timeout-Ms` (default: the model's) and a disconnect watch on the connection.

    Call after the request body has been read: the watcher consumes the ASGI receive channel.
    """
    existing = getattr(request.state, "inference_context", None)
    if existing is not None:
        return existing
    deadline = None
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is not None:
        try:
            timeout_ms = float(raw)
        except ValueError as exc:
            raise BadRequest(f"{TIMEOUT_HEADER} must be a number of milliseconds, got {raw!r}") from exc
        if not timeout_ms > 0:
            raise BadRequest(f"{TIMEOUT_HEADER} must be positive, got {raw!r}")
        deadline = time.monotonic() + timeout_ms / 1000
    ctx = RequestContext(deadline=deadline)
    receive = request.receive

    async def watch() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                ctx.disconnected.set()
                return

    request.state.inference_context = ctx
    request.state.disconnect_watch = asyncio.get_running_loop().create_task(watch())
    return ctx
