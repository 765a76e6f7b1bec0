"""The one dependency of a task route (`Call`, built by `task_call(family)`): `?model=` and `?version=` resolved
through the data plane (404/503 for you), the family's prepared state, the request's deadline and disconnect
watch, the work pool and the response envelope, so that a handler reads decode -> submit -> encode."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

from fastapi import Query, Request, Response
from pydantic import BaseModel

from service.dataplane.context import RequestContext
from service.http.request import parse_json_body, request_context, resolve_version, workpool_of
from service.rollouts.routing import follow_swap

if TYPE_CHECKING:
    from service.dataplane.workpool import WorkPool
    from service.models.validation import Tensors
    from service.models.version import LoadedVersion

StateT = TypeVar("StateT")
ModelT = TypeVar("ModelT", bound=BaseModel)
ResultT = TypeVar("ResultT")


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
        served = resolve_version(request, model, version, family=family)
        return Call(request, served, served.prepared, version is not None)

    resolve.__name__ = f"{family}_call"
    return resolve
