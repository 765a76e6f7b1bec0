"""ASGI middleware: `X-Model-Version` on every answer that a model version gave, and, while a rollout runs,
the per-version live figures and the shadow copies (queued after the answer has been sent)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from service.rollouts.controller import RolloutController
    from service.rollouts.state import Ticket

VERSION_HEADER = b"x-model-version"


class RolloutMiddleware:
    def __init__(self, app: ASGIApp, controller: RolloutController) -> None:
        self.app = app
        self.controller = controller
        controller.replay_app = app  # shadow copies skip the metrics middleware: only rollout_* count them

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        if not self.controller.active:  # the common case: one header, nothing kept
            await self.app(scope, receive, _stamped(send, state))
            return
        await self._with_rollout(scope, state, receive, send)

    async def _with_rollout(self, scope: Scope, state: dict[str, Any], receive: Receive, send: Send) -> None:
        controller = self.controller
        body: list[bytes] = []  # references to the chunks the handler reads anyway: no copy
        answer: list[bytes] = []
        status = 500

        async def tee() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
            return message

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                _add_version(message, state)
            elif message["type"] == "http.response.body":
                ticket = state.get("rollout")
                if ticket is not None and ticket.compare:
                    answer.append(message.get("body", b""))
            await send(message)

        controller.live_started()
        started = time.perf_counter()
        try:
            await self.app(scope, tee, capture)
        finally:
            controller.live_finished()
            ticket: Ticket | None = state.get("rollout")
            if ticket is not None:
                controller.record_live(ticket, status, time.perf_counter() - started)
                if ticket.replay and 200 <= status < 300:
                    controller.enqueue_shadow(ticket, scope, b"".join(body), b"".join(answer))


def _add_version(message: Message, state: dict[str, Any]) -> None:
    version = state.get("model_version")
    headers = message.get("headers", ())
    # A route that names its version itself (a route that picks its model itself) keeps its own: one header, one value.
    if version and not any(name.lower() == VERSION_HEADER for name, _ in headers):
        message["headers"] = [*headers, (VERSION_HEADER, version.encode())]


def _stamped(send: Send, state: dict[str, Any]) -> Send:
    async def stamped(message: Message) -> None:
        if message["type"] == "http.response.start":
            _add_version(message, state)
        await send(message)
    return stamped
