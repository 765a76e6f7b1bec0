"""Test helpers shared by every test folder (importable as `testkit`; tests/ is on sys.path)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """A uvicorn process serving `repository`; `url` is its base URL."""

    def __init__(self, repository: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, "SERVICE_MODEL_REPOSITORY": str(repository), "SERVICE_DEVICE": "cpu",
                    "SERVICE_STATE_DIR": str(log_path.parent / f"state-{self.port}"), "SERVICE_CPU_THREADS": "1",
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"service not ready after {timeout}s:\n{self.log()[-4000:]}")

    def terminate(self) -> int:
        """SIGTERM (graceful drain) and wait; returns the exit code."""
        code = stop_process(self.process, timeout=60)
        self._log.close()
        return code


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


def train_tiny(out_dir: Path, hidden: int = 32, depth: int = 2, repeats: int = 1, steps: int = 20) -> Path:
    from training.tiny.model import TinyConfig
    from training.tiny.train import train

    return train(out_dir, TinyConfig(hidden=hidden, depth=depth, repeats=repeats), steps=steps)


def export_tiny(checkpoint: Path, repository: Path, name: str = "tiny", version: int | None = None,
                **options: str) -> Path:
    from export.core import publish, split_batching_options, with_batching
    from export.families.tiny import plan_from_checkpoint

    batching, options = split_batching_options(options)
    return publish(with_batching(plan_from_checkpoint(checkpoint, **options), batching), repository, name, version)




def metric_value(text: str, sample_name: str, labels: dict[str, str]) -> float:
    """Sum of the samples called `sample_name` whose labels include `labels` (0 when there are none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
