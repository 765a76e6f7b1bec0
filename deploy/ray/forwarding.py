"""An HTTP request as a plain value that crosses a Ray Serve handle, and running it through an ASGI app in the
replica's own event loop (the service's app, unchanged: its middleware, batcher, deadlines and errors)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message


@dataclass
class ForwardedRequest:
    method: str
    path: str
    query_string: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    client: tuple[str, int] | None = None


@dataclass
class ForwardedResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        key = name.lower().encode()
        return next((v.decode("latin-1") for k, v in self.headers if k.lower() == key), None)


async def call_asgi(app: ASGIApp, request: ForwardedRequest) -> ForwardedResponse:
    """One request through `app`. The body arrives at once; after it `receive` waits until the caller's task
    is cancelled (Serve cancels it when the HTTP client disconnects), so the app's disconnect watch sees a
    live client until then and the batcher drops the cancelled request if its batch has not started."""
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": request.method, "scheme": "http", "path": request.path, "raw_path": request.path.encode(),
        "root_path": "", "query_string": request.query_string, "headers": request.headers,
        "client": request.client, "server": ("ray-serve", 80), "state": {},
    }
    delivered = False
    never = asyncio.Event()

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await never.wait()
        return {"type": "http.disconnect"}

    status = 500
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def send(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))

    await app(scope, receive, send)
    return ForwardedResponse(status, headers, b"".join(chunks))
