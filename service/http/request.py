"""HTTP's side of the data plane: a Starlette request's deadline (`X-Request-Timeout-Ms`), its disconnect watch,
its JSON body, and the one version resolution of every HTTP route (task routes, OIP, statistics) with the
rollouts hook."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING, TypeVar

from fastapi import Request
from pydantic import BaseModel
from starlette.types import Receive

from service.dataplane.bodies import validate_json
from service.dataplane.context import RequestContext, timeout_ms_seconds
from service.errors import BadRequest, UnsupportedMediaType
from service.rollouts.routing import route_request

if TYPE_CHECKING:
    from service.dataplane.plane import DataPlane
    from service.dataplane.workpool import WorkPool
    from service.models.hub import ModelHub
    from service.models.version import LoadedVersion

TIMEOUT_HEADER = "x-request-timeout-ms"
ModelT = TypeVar("ModelT", bound=BaseModel)


def dataplane_of(request: Request) -> DataPlane:
    return request.app.state.dataplane


def hub_of(request: Request) -> ModelHub:
    return request.app.state.hub


def workpool_of(request: Request) -> WorkPool:
    """The app's bounded pool for decoding/preprocessing: `reserve()` around reading a body, `run()` after."""
    return request.app.state.workpool


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def resolve_version(request: Request, model: str | None = None, version: int | None = None, *,
                    family: str | None = None) -> LoadedVersion:
    """The version that answers (the data plane's resolution; `model` default: the one named like `family`),
    recorded for the metrics and X-Model-Version; a running rollout (service/rollouts) may answer a canary or
    shadow copy with its candidate."""
    name = model or family
    if name is None:
        raise TypeError("resolve_version needs a model or a family")
    loaded = dataplane_of(request).resolve(name, version, family=family)
    return route_request(request, loaded, explicit=version is not None)


def request_deadline(request: Request) -> float | None:
    """`time.monotonic()` deadline from `X-Request-Timeout-Ms`, counted from the request's arrival."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    arrived = request.scope.get("state", {}).get("arrived_at", time.monotonic())
    return arrived + timeout_ms_seconds(raw, TIMEOUT_HEADER)


def request_context(request: Request) -> RequestContext:
    """Deadline from `X-Request-Timeout-Ms` (default: the model's) and a disconnect watch on the connection,
    started when the request first waits (the batcher's queue, the work pool).

    Call after the request body has been read: the watcher consumes the ASGI receive channel.
    """
    existing = request.scope.get("state", {}).get("inference_context")
    if existing is not None:
        return existing
    ctx = RequestContext(deadline=request_deadline(request))
    state = request.scope.setdefault("state", {})
    # Started when the request first waits (ctx.waiting()); ServiceMiddleware ends it. The partial holds the
    # signal, not `ctx`: no reference cycle through the context.
    ctx.on_wait = functools.partial(_start_watch, request.receive, ctx.disconnected)
    state["inference_context"] = ctx
    return ctx


def _start_watch(receive: Receive, disconnected: asyncio.Event) -> asyncio.Task:
    return asyncio.get_running_loop().create_task(_watch(receive, disconnected))


async def _watch(receive: Receive, disconnected: asyncio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            disconnected.set()
            return


async def parse_json_body(request: Request, schema: type[ModelT], what: str = "request",
                          max_values: int | None = None) -> ModelT:
    """Read a JSON body and validate it against `schema` on the work pool, never on the event loop.

    415 unless the content type is JSON; 429 before the body is read when the pool is full; 413 when the
    body holds more than `max_values` values (commas + 1; checked before parsing); 400 for malformed (or
    too deeply nested) JSON; 422 naming the fields that fail the schema.
    """
    content_type = media_type(request)
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"content type {content_type or '(none)'!r}: send application/json")
    pool = workpool_of(request)
    with pool.reserve(what):  # 429 before the body is read; holds a place while it is
        raw = await request.body()
    if not raw.strip():
        raise BadRequest("empty body: send a JSON object")
    ctx = RequestContext(deadline=request_deadline(request))
    return await pool.run(validate_json, schema, raw, max_values, what, ctx=ctx, what=what)
