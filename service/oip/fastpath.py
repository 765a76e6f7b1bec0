"""OIP inference without FastAPI's routing: the hottest route, dispatched straight from ASGI.

`POST /v2/models/{m}[/versions/{v}]/infer` is most of the traffic of a serving stack, and the profile of
the tiny model at concurrency 64 put about a third of the event loop in Starlette's route matching,
FastAPI's dependency solving and exception middleware. This middleware recognises the path with one regex
and calls the same handler (`service.oip.routes.infer_request`) with a plain Starlette `Request`; errors
go through the app's own exception handlers, so bodies, statuses and metrics are those of the routed path.
Every other request passes through untouched.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.oip.routes import infer_request

log = logging.getLogger(__name__)

INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")


class _Endpoint:
    """What the metrics middleware reads from `scope["route"]`: the route template."""

    def __init__(self, path: str) -> None:
        self.path = path


_ROUTES = {False: _Endpoint("/v2/models/{model}/infer"),
           True: _Endpoint("/v2/models/{model}/versions/{version}/infer")}


class InferFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = INFER_PATH.match(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        model, version = match.group(1), match.group(2)
        scope["route"] = _ROUTES[version is not None]
        request = Request(scope, receive)
        try:
            response = await infer_request(request, model, version)
        except Exception as exc:  # noqa: BLE001 - rendered by the app's handlers, as on the routed path
            response = await self._handle(request, exc)
        await response(scope, receive, send)

    @staticmethod
    async def _handle(request: Request, exc: Exception) -> Any:
        handlers = request.app.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return await handlers[cls](request, exc)
        raise exc
