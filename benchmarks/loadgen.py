"""Closed-loop HTTP load generator: N concurrent clients for a fixed number of requests or seconds.

Used by the benchmark scripts; prints nothing itself. `ServiceProcess` launches `python -m service` on a
repository when no URL is given (with the caller's device and threads, unlike harness.LiveServer's test defaults).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from harness import ROOT, free_port, stop_process, wait_until_ready


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_s: np.ndarray  # successful (200) requests only
    statuses: Counter = field(default_factory=Counter)

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return len(self.latencies_s) / self.seconds

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000) if len(self.latencies_s) else float("nan")

    def summary(self) -> str:
        return (f"concurrency {self.concurrency:>3}: {self.requests} requests, {self.errors} errors, "
                f"p50 {self.percentile_ms(50):.1f} ms, p99 {self.percentile_ms(99):.1f} ms, "
                f"{self.throughput:.1f} req/s, statuses {dict(self.statuses)}")


async def _run(url: str, make_request: Callable, concurrency: int, total: int, warmup: int) -> LoadResult:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        for _ in range(warmup):
            await make_request(client)
        latencies: list[float] = []
        statuses: Counter = Counter()
        remaining = total

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                response = await make_request(client)
                statuses[response.status_code] += 1
                if response.status_code == 200:  # rejections (429, ...) are counted, not timed
                    latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    errors = total - statuses[200]
    return LoadResult(concurrency, total, errors, elapsed, np.asarray(latencies), statuses)


def run_load(url: str, make_request: Callable, concurrency: int, total: int, warmup: int = 5) -> LoadResult:
    """`make_request(client) -> awaitable Response`; returns latency percentiles and throughput."""
    return asyncio.run(_run(url, make_request, concurrency, total, warmup))


class ServiceProcess:
    """`python -m service` on a free port with the caller's environment (its device and threads: what is
    measured), logging to the console; SIGTERM when the block ends."""

    def __init__(self, repository: Path, env: dict[str, str] | None = None, root: Path = ROOT) -> None:
        """`root`: the checkout whose `service` runs (another worktree for before/after comparisons)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "--port", str(self.port), "--log-level", "warning"],
            # GRPC_PORT=0: these benchmarks speak HTTP, and processes side by side would share gRPC's 8001.
            cwd=root, env={**os.environ, "SERVICE_MODEL_REPOSITORY": str(repository), "GRPC_PORT": "0", **(env or {})},
        )
        wait_until_ready(self.url, self.process, timeout=300)

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *_: object) -> None:
        stop_process(self.process, timeout=60)
