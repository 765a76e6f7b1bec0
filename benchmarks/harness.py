"""Drive a real service: a `python -m service` process on a free loopback port (LiveServer), and a tiny model to
serve (train_tiny, export_tiny), and a Prometheus sample read (metric_value).

Shared by the benchmarks (`from harness import ...`, benchmarks/ on sys.path) and the tests (`from
benchmarks.harness import ...`, and the server fixtures of tests/conftest.py): not a test module, so that no
benchmark imports from tests/.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, process: subprocess.Popen, timeout: float,
                     log_tail: Callable[[], str] = lambda: "") -> None:
    """Poll `url`/v2/health/ready until it answers 200; raise when `process` exits or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited with {process.returncode}:\n{log_tail()}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"service not ready after {timeout}s:\n{log_tail()}")


def stop_process(process: subprocess.Popen, timeout: float) -> int:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class LiveServer:
    """A uvicorn process serving `repository` on the CPU with one thread, logging to `log_path`; `url` is its
    base URL."""

    def __init__(self, repository: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, "SERVICE_MODEL_REPOSITORY": str(repository), "SERVICE_DEVICE": "cpu",
                    "SERVICE_STATE_DIR": str(log_path.parent / f"state-{self.port}"), "SERVICE_CPU_THREADS": "1",
                    # gRPC off unless asked for: servers running side by side would share Triton's 8001.
                    "PYTHONUNBUFFERED": "1", "GRPC_PORT": "0", **(env or {})}
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 180.0) -> None:
        wait_until_ready(self.url, self.process, timeout, lambda: self.log()[-4000:])

    def terminate(self) -> int:
        """SIGTERM (graceful drain) and wait; returns the exit code."""
        code = stop_process(self.process, timeout=60)
        self._log.close()
        return code


@contextlib.contextmanager
def running_server(repository: Path, log_path: Path, env: dict[str, str] | None = None,
                   timeout: float = 180.0) -> Iterator[LiveServer]:
    """A ready LiveServer for the block, terminated after it."""
    server = LiveServer(repository, log_path, env)
    try:
        server.wait_ready(timeout)
        yield server
    finally:
        server.terminate()


def train_tiny(out_dir: Path, hidden: int = 32, depth: int = 2, repeats: int = 1, steps: int = 20) -> Path:
    from training.tiny.config import TinyConfig, TinyModelConfig
    from training.tiny.train import train

    config = TinyConfig(model=TinyModelConfig(hidden=hidden, depth=depth, repeats=repeats), steps=steps)
    return train(config, out_dir, log=None).best_checkpoint


def export_tiny(checkpoint: Path, repository: Path, name: str = "tiny", version: int | None = None,
                **options: str) -> Path:
    from export.core import publish, split_batching_options, with_batching
    from export.families.tiny import plan_from_checkpoint

    batching, options = split_batching_options(options)
    return publish(with_batching(plan_from_checkpoint(checkpoint, options), batching), repository, name, version)


def metric_value(text: str, sample_name: str, labels: dict[str, str]) -> float:
    """Sum of the samples called `sample_name` whose labels include `labels` (0 when there are none)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
