"""Test helpers shared by every test folder (importable as `testkit`; tests/ is on sys.path)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import httpx

# The service launcher and the tiny model live in benchmarks/harness.py (the benchmarks use them too); re-exported
# here for the tests' `from testkit import ...`.
from benchmarks.harness import (  # noqa: F401
    ROOT,
    LiveServer,
    export_tiny,
    free_port,
    metric_value,
    running_server,
    stop_process,
    train_tiny,
)


class InProcessService:
    """The app in this process behind httpx's `ASGITransport`: no socket, no subprocess, for the validation
    and error paths. The app's lifespan (model loading, work pool) runs on an event loop in a thread of its
    own, and `get`/`post`/`request` are synchronous like `httpx.Client`. What needs a real server (batching
    under concurrency, disconnects, SIGTERM, connection limits, Prometheus, tritonclient) uses LiveServer."""

    def __init__(self, repository: Path, state_dir: Path, timeout: float = 180.0, **settings: object) -> None:
        import asyncio
        import threading

        from service.app import create_app
        from service.settings import Settings

        self.app = create_app(Settings(model_repository=repository, state_dir=state_dir, device="cpu",
                                       cpu_threads=1, gc_freeze=False, **settings))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="asgi-app", daemon=True)
        self._thread.start()
        self._lifespan = self.app.router.lifespan_context(self.app)
        self._run(self._lifespan.__aenter__(), timeout)
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://asgi",
                                         timeout=60)
        deadline = time.monotonic() + timeout
        while self.get("/v2/health/ready").status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout}s: {self.get('/v2/repository/index').text[:2000]}")
            time.sleep(0.05)

    def _run(self, coroutine, timeout: float = 120.0):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        return self._run(self._client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def close(self) -> None:
        self._run(self._client.aclose())
        self._run(self._lifespan.__aexit__(None, None, None))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


# Every hostile_request of the session: (name, status, seconds, worst loop lag s, peak RSS growth MB);
# conftest prints the totals in pytest's terminal summary.
HOSTILE_RECORDS: list[tuple[str, int, float, float, float]] = []


class HostileProbe:
    """Measures what one hostile request costs a live server process.

    While active, a thread pings `/v2/health/live` every `interval` s on its own keep-alive connection; the
    worst ping latency bounds how long the event loop was blocked (`worst_lag_s`). The peak RSS of the
    process is reset on entry (`/proc/<pid>/clear_refs`) and read on exit: `rss_growth_bytes` is the peak
    during the block minus the resident size at entry.
    """

    def __init__(self, server: LiveServer, interval: float = 0.01) -> None:
        import threading

        self.server = server
        self.interval = interval
        self.worst_lag_s = 0.0
        self.pings = 0
        self.rss_growth_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._ping, daemon=True)

    def _status(self, field: str) -> int:
        for line in Path(f"/proc/{self.server.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    def _ping(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                with contextlib.suppress(httpx.TransportError):
                    client.get("/v2/health/live")
                self.worst_lag_s = max(self.worst_lag_s, time.perf_counter() - started)
                self.pings += 1
                self._stop.wait(self.interval)

    def __enter__(self) -> HostileProbe:
        self._rss_start = self._status("VmRSS")
        # Reset the peak RSS; where not permitted, the peak counts from the process start.
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.server.process.pid}/clear_refs").write_text("5")
        self._thread.start()
        time.sleep(2 * self.interval)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.rss_growth_bytes = max(0, self._status("VmHWM") - self._rss_start)


def hostile_request(server: LiveServer, send, *, max_seconds: float = 5.0, max_lag_s: float = 0.25,
                    max_rss_mb: float = 300.0, report: list | None = None, name: str = "") -> httpx.Response:
    """Run `send(client) -> Response` against `server` under a HostileProbe and assert the shared bounds:
    answered within `max_seconds`, never a 5xx, event loop never blocked longer than `max_lag_s`, peak RSS
    growth under `max_rss_mb`. Appends (name, status, seconds, lag, rss MB) to `report` when given."""
    with httpx.Client(base_url=server.url, timeout=max_seconds + 30) as client, HostileProbe(server) as probe:
        started = time.perf_counter()
        response = send(client)
        elapsed = time.perf_counter() - started
    rss_mb = probe.rss_growth_bytes / 2**20
    record = (name, response.status_code, elapsed, probe.worst_lag_s, rss_mb)
    HOSTILE_RECORDS.append(record)
    if report is not None:
        report.append(record)
    assert response.status_code < 500, (name, response.status_code, response.text[:500])
    assert elapsed <= max_seconds, (name, f"took {elapsed:.2f}s > {max_seconds}s")
    assert probe.worst_lag_s <= max_lag_s, (name, f"event loop blocked {probe.worst_lag_s * 1000:.0f} ms")
    assert rss_mb <= max_rss_mb, (name, f"RSS grew {rss_mb:.0f} MB > {max_rss_mb} MB")
    return response


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header announcing width x height (its pixel data is a few bytes: only the header is read)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose SOF0 frame header is patched to announce width x height."""
    import io
    import struct

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)
