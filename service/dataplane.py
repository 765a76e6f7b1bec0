"""The data plane between HTTP and the model hub (KServe's `DataPlane` is the analogy): what every route needs.

- `Call` and `task_call(family)`: the one FastAPI dependency of a task route. It resolves `?model=` and
  `?version=` to a served version (404/503 for you), records them for the metrics, and gives the handler the
  family's prepared state, the request's deadline and disconnect watch, the work pool and the response
  envelope, so that a handler reads decode -> submit -> encode.
- `resolve_version`, `request_context`, `request_deadline`, `parse_json_body`: the same steps one at a time,
  for the OIP routes and for handlers that choose the model themselves (the codec's `?quality=`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

from fastapi import Query, Request, Response
from pydantic import BaseModel

from service.batching import RequestContext
from service.errors import BadRequest, InvalidInput, UnsupportedMediaType
from service.jsonbody import validate_json
from service.rollouts.routing import follow_swap, route_request

if TYPE_CHECKING:
    from service.repository import LoadedVersion, ModelHub, Tensors
    from service.workpool import WorkPool

TIMEOUT_HEADER = "x-request-timeout-ms"
StateT = TypeVar("StateT")
ModelT = TypeVar("ModelT", bound=BaseModel)
ResultT = TypeVar("ResultT")


def hub_of(request: Request) -> ModelHub:
    return request.app.state.hub


def workpool_of(request: Request) -> WorkPool:
    """The app's bounded pool for decoding/preprocessing: `reserve()` around reading a body, `run()` after."""
    return request.app.state.workpool


def request_deadline(request: Request) -> float | None:
    """`time.monotonic()` deadline from `X-Request-Timeout-Ms`, counted from the request's arrival."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        timeout_ms = float(raw)
    except ValueError as exc:
        raise BadRequest(f"{TIMEOUT_HEADER} must be a number of milliseconds, got {raw!r}") from exc
    if not (math.isfinite(timeout_ms) and timeout_ms > 0):
        raise BadRequest(f"{TIMEOUT_HEADER} must be a positive finite number, got {raw!r}")
    arrived = request.scope.get("state", {}).get("arrived_at", time.monotonic())
    return arrived + timeout_ms / 1000


def resolve_version(request: Request, *, family: str, model: str | None = None,
                    version: int | None = None) -> LoadedVersion:
    """The served version of `model` (default: the model named like the family) and record it for metrics."""
    loaded = hub_of(request).get(model or family, version)
    if loaded.manifest.family != family:
        raise InvalidInput(f"model {loaded.name!r} is a {loaded.manifest.family!r} model, not {family!r}")
    # Rollouts hook (service/rollouts): a canary or shadow copy may be answered by the candidate version.
    return route_request(request, loaded, explicit=version is not None)


def request_context(request: Request) -> RequestContext:
    """Deadline from `X-Request-Timeout-Ms` (default: the model's) and a disconnect watch on the connection.

    Call after the request body has been read: the watcher consumes the ASGI receive channel.
    """
    existing = getattr(request.state, "inference_context", None)
    if existing is not None:
        return existing
    ctx = RequestContext(deadline=request_deadline(request))
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


async def parse_json_body(request: Request, schema: type[ModelT], what: str = "request",
                          max_values: int | None = None) -> ModelT:
    """Read a JSON body and validate it against `schema` on the work pool, never on the event loop.

    415 unless the content type is JSON; 429 before the body is read when the pool is full; 413 when the
    body holds more than `max_values` values (commas + 1; checked before parsing); 400 for malformed (or
    too deeply nested) JSON; 422 naming the fields that fail the schema.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"content type {content_type or '(none)'!r}: send application/json")
    pool = workpool_of(request)
    with pool.reserve(what):  # 429 before the body is read; holds a place while it is
        raw = await request.body()
    if not raw.strip():
        raise BadRequest("empty body: send a JSON object")
    ctx = RequestContext(deadline=request_deadline(request))
    return await pool.run(validate_json, schema, raw, max_values, what, ctx=ctx, what=what)


def _inline_defs(schema: dict) -> dict:
    """`schema` with its `$defs` substituted where referenced: FastAPI does not hoist the `$defs` of an
    `openapi_extra` schema into components, so a `$ref` to them would dangle."""
    defs = schema.pop("$defs", {})

    def resolve(node: object, seen: frozenset[str]) -> object:
        if isinstance(node, list):
            return [resolve(v, seen) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            if name in seen:
                raise ValueError(f"{name} is recursive: it cannot be inlined into an OpenAPI request body")
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return resolve({**defs[name], **rest}, seen | {name})
        return {k: resolve(v, seen) for k, v in node.items()}

    return resolve(schema, frozenset())  # type: ignore[return-value]


def json_body_openapi(schema: type[BaseModel]) -> dict:
    """`openapi_extra` for a route that reads its body with `parse_json_body` (FastAPI cannot see it)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": _inline_defs(schema.model_json_schema())}}}}


@dataclass
class Call(Generic[StateT]):
    """One request to a task route, resolved to the version that answers it."""

    request: Request
    version: LoadedVersion
    state: StateT  # what the family's plug-in prepared for this version
    explicit: bool = False  # the client named the version (`?version=`)

    def _follow_swap(self) -> None:
        # Rollouts hook: the version was swapped out (promotion, reload) while the body was read: the served one
        # answers instead of a 503 from a draining batcher.
        current = follow_swap(self.request, self.version, self.explicit)
        if current is not self.version:
            self.version, self.state = current, current.prepared

    @property
    def ctx(self) -> RequestContext:
        """Deadline and disconnect watch; the first use must come after the body has been read."""
        return request_context(self.request)

    @property
    def pool(self) -> WorkPool:
        return workpool_of(self.request)

    async def json(self, schema: type[ModelT], what: str, max_values: int | None = None) -> ModelT:
        """The JSON body validated against `schema` on the work pool (see `parse_json_body`)."""
        return await parse_json_body(self.request, schema, what, max_values)

    async def work(self, fn: Callable[..., ResultT], *args: Any, what: str) -> ResultT:
        """`fn(*args)` on the work pool, under the request's deadline and disconnect watch."""
        return await self.pool.run(fn, *args, ctx=self.ctx, what=what)

    async def infer(self, inputs: Tensors, graph: str | None = None) -> Tensors:
        """The version's graph (default: primary) through its dynamic batcher."""
        self._follow_swap()
        return await self.version.infer(inputs, ctx=self.ctx, graph=graph)

    async def submit(self, procedure: str, payload: Any) -> Any:
        """A procedure queue of the version (e.g. the codec's coding loop)."""
        # No _follow_swap here: a procedure may be tied to its version (a codec stream decodes only with the
        # weights that made it).
        return await self.version.submit(procedure, payload, ctx=self.ctx)

    def envelope(self, **fields: Any) -> dict[str, Any]:
        """The fields every task response starts with: which model and version answered."""
        return {"model": self.version.name, "version": self.version.version, **fields}

    async def respond(self, render: Callable[..., bytes], *args: Any, what: str,
                      media_type: str = "application/json", headers: dict[str, str] | None = None) -> Response:
        """The response body rendered by `render(*args) -> bytes` on the work pool (request-sized
        serialisation stays off the event loop)."""
        # Admitted already (the answer is computed): rendering it is never refused by the pool's bound.
        content = await self.pool.run(render, *args, ctx=self.ctx, what=what, admitted=True)
        return Response(content, media_type=media_type, headers=headers)


ModelQuery = Annotated[str | None, Query(description="model name (default: the family's default model)")]
VersionQuery = Annotated[int | None, Query(description="model version (default: the served one)")]


def task_call(family: str) -> Callable[..., Coroutine[Any, Any, Call]]:
    """The dependency of a `family` task route: `call: Annotated[Call[State], Depends(task_call("traffic"))]`."""

    async def resolve(request: Request, model: ModelQuery = None, version: VersionQuery = None) -> Call:
        served = resolve_version(request, family=family, model=model, version=version)
        return Call(request, served, served.prepared, version is not None)

    resolve.__name__ = f"{family}_call"
    return resolve
