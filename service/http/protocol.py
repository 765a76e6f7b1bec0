"""HTTP/1.1 connection guards below the app: uvicorn's httptools protocol with limits of its own.

uvicorn alone has no bound on the size of request headers (httptools concatenates a header value chunk by
chunk: a 150 MiB header froze the loop for 21 s), no timeout for a connection that never completes its
headers (idle half-open connections pile up until `limit_concurrency` answers 503 to every route, health
included) and no per-client connection bound. `guarded_protocol(limits)` returns a protocol class for
`uvicorn.run(http=...)` that adds, per connection:

- a header size limit: bytes are counted before they reach the parser; a request whose headers are not
  complete within `max_header_bytes` gets 431 and the rest of its input is discarded unparsed;
- a header-read timeout: a connection that has not completed a request's headers `header_timeout_s`
  after it opened (or after that request's first byte, on a kept-alive connection) is closed, with 408 when
  part of a request had arrived;
- a connection limit per peer address (`max_connections_per_client`): beyond it a new connection is
  answered 503 and closed, so one client cannot use up the server's connection budget;
- the global limit (`max_connections`, uvicorn's `limit_concurrency`), except for health probes and
  `/metrics`, which keep answering while the server is saturated.

Every early answer uses the service's JSON error shape (`error_body`). After an early answer the
connection is half-closed and lingers briefly, discarding input, so that a client still sending its
request reads the answer instead of a connection reset.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import error_body

log = logging.getLogger(__name__)

# Routes that answer even when the server is at its global connection limit: probes and scraping must keep
# telling the orchestrator the truth ("alive, busy") instead of failing with everything else.
UNLIMITED_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
LINGER_S = 1.0
LOG_EVERY_S = 10.0



@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 10.0
    max_connections: int | None = 2048  # all clients together; None = unbounded
    max_connections_per_client: int = 256  # 0 = unbounded (behind a proxy every client has its address)


class _ThrottledLog:
    """One warning per reason per `every_s` (a flood must not turn into a log flood), with a suppressed count."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, reason: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -math.inf) < self.every_s:
            self._suppressed[reason] += 1
            return
        self._last[reason] = now
        suppressed = self._suppressed.pop(reason, 0)
        log.warning("%s%s", message, f" ({suppressed} more since the last report)" if suppressed else "")


def _response(status: int, phrase: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> bytes:
    payload = json.dumps(body).encode()
    lines = [f"HTTP/1.1 {status} {phrase}", "content-type: application/json",
             f"content-length: {len(payload)}", "connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


async def _over_capacity(scope: Any, receive: Any, send: Any) -> None:
    """ASGI app answering in place of the service when the global connection limit is reached."""
    payload = json.dumps(error_body(scope["path"], "overloaded",
                                    "server is at its connection limit; retry later")).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """One instance per connection; `limits` and the per-peer counts are shared by the class."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    open_per_client: ClassVar[Counter[str]] = Counter()
    notes: ClassVar[_ThrottledLog] = _ThrottledLog()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # checked in on_headers_complete, with the probe exemption
        self._peer: str | None = None  # set while this connection counts against its peer's limit
        self._header_bytes = 0
        self._reading_headers = True
        self._message_started = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._lingering = False

    # ---- connection lifetime ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = self.client[0] if self.client else None
        per_client = self.limits.max_connections_per_client
        if peer is not None and per_client > 0:
            if self.open_per_client[peer] >= per_client:
                self.notes.warning("per_client", f"refused a connection from {peer}: "
                                                 f"{per_client} already open (SERVICE_MAX_CONNECTIONS_PER_CLIENT)")
                self._answer_early(503, "Service Unavailable", "too_many_connections",
                                   f"more than {per_client} open connections from one client address",
                                   {"retry-after": "1"})
                return
            self.open_per_client[peer] += 1
            self._peer = peer
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._linger_timer = None
        if self._peer is not None:
            self.open_per_client[self._peer] -= 1
            if self.open_per_client[self._peer] <= 0:
                del self.open_per_client[self._peer]
            self._peer = None
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self._lingering:
            self.transport.close()
            return
        super().shutdown()

    # ---- header size ---------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # an early answer was sent: discard the rest unparsed
        if not self._reading_headers:
            super().data_received(data)
            return
        room = self.limits.max_header_bytes - self._header_bytes
        if len(data) <= room:
            self._header_bytes += len(data)
            super().data_received(data)
            return
        # Feed only what the limit allows; if the headers end in there, the rest is body or the next request.
        self._header_bytes += room
        super().data_received(data[:room])
        if self._lingering or self.transport.is_closing():
            return
        if self._reading_headers:
            self.notes.warning("header_size", f"request headers from {self._peer_name()} exceed "
                                              f"{self.limits.max_header_bytes} bytes: 431")
            self._answer_early(431, "Request Header Fields Too Large", "headers_too_large",
                               f"request headers exceed the limit of {self.limits.max_header_bytes} bytes "
                               "(SERVICE_MAX_HEADER_BYTES)")
            return
        self.data_received(data[room:])

    # ---- parser callbacks ------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._message_started = True
        self._arm_header_timer()  # a kept-alive connection's next request: its headers get the same bound

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._cancel_header_timer()
        self.app = _over_capacity if self._at_capacity() else self.config.loaded_app
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # Bytes after this belong to the next request. Within the current chunk (at most one socket read)
        # they are not counted; every later chunk is.
        self._reading_headers = True
        self._message_started = False
        self._header_bytes = 0

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request httptools cannot parse, in the JSON error shape."""
        self._answer_early(400, "Bad Request", "bad_request", msg)

    # ---- helpers -----------------------------------------------------------------------------------------
    def _at_capacity(self) -> bool:
        limit = self.limits.max_connections
        if limit is None or (len(self.connections) < limit and len(self.tasks) < limit):
            return False
        if self._request_path() in UNLIMITED_PATHS:
            return False
        self.notes.warning("capacity", f"connection limit {limit} reached (SERVICE_MAX_CONNECTIONS): 503")
        return True

    def _request_path(self) -> str:
        try:
            return httptools.parse_url(self.url).path.decode("ascii", "replace")
        except (httptools.HttpParserInvalidURLError, AttributeError):
            return ""

    def _peer_name(self) -> str:
        return self.client[0] if self.client else "a client"

    def _arm_header_timer(self) -> None:
        if self._header_timer is None and not self._lingering:
            self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._reading_headers:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_header_timer()  # a pipelined request behind a running one: let that response finish
            return
        self.notes.warning("header_timeout", f"closed a connection from {self._peer_name()}: no complete request "
                                             f"headers within {self.limits.header_timeout_s:g} s")
        if self._message_started:
            self._answer_early(408, "Request Timeout", "request_timeout",
                               f"request headers not complete within {self.limits.header_timeout_s:g} s "
                               "(SERVICE_HEADER_TIMEOUT_S)")
        else:
            self.transport.close()

    def _answer_early(self, status: int, phrase: str, code: str, message: str,
                      headers: dict[str, str] | None = None) -> None:
        """Answer before (or instead of) the app, then half-close and discard input for a moment."""
        self._cancel_header_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is still being written on this connection: no answer fits
            return
        self._lingering = True
        self.transport.write(_response(status, phrase, error_body(self._url_path_hint(), code, message), headers))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_S, self.transport.close)

    def _url_path_hint(self) -> str:
        # The request line may be partial (431, 408) or absent (refused connection); the shape follows it.
        url = getattr(self, "url", b"") or b""
        return url.split(b"?", 1)[0].decode("ascii", "replace")


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
    """A protocol class for `uvicorn.run(http=...)` with these limits and its own per-client counts."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,),
                {"limits": limits, "open_per_client": Counter(), "notes": _ThrottledLog()})
