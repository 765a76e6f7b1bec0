"""Shared fixtures: servers (`serve`, `live_server`: real processes on 127.0.0.1; `asgi_service`: the app in
this process), and tiny model repositories (each family's are in tests/fixtures/)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmarks.harness import LiveServer, export_tiny, train_tiny
from tests.fixtures.asgi import InProcessService
from tests.fixtures.hostile import HOSTILE_RECORDS

# Each family's repository fixtures (and `all_families_repository`), usable from any test folder.
pytest_plugins = ["tests.fixtures.traffic", "tests.fixtures.weld", "tests.fixtures.water", "tests.fixtures.imagecodec",
                  "tests.fixtures.combined"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests run only where CUDA is visible; elsewhere they are skipped with the reason."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Totals of every `hostile_request` of the run (the figures issue 11 asks to report)."""
    if not HOSTILE_RECORDS:
        return
    server_errors = sum(1 for _, status, *_ in HOSTILE_RECORDS if status >= 500)
    worst_lag = max(HOSTILE_RECORDS, key=lambda r: r[3])
    worst_rss = max(HOSTILE_RECORDS, key=lambda r: r[4])
    terminalreporter.write_line(
        f"hostile requests: {len(HOSTILE_RECORDS)}, 5xx: {server_errors}, worst loop lag "
        f"{worst_lag[3] * 1000:.0f} ms ({worst_lag[0] or 'unnamed'}), worst RSS growth {worst_rss[4]:.0f} MB "
        f"({worst_rss[0] or 'unnamed'})")


def _server_factory(folder: Path) -> tuple[Callable[..., LiveServer], list[LiveServer]]:
    """`start(repository, env={...}, wait=True)`: a service process logging (and keeping state) under `folder`."""
    servers: list[LiveServer] = []

    def start(repository: Path, env: dict[str, str] | None = None, wait: bool = True,
              timeout: float = 180.0) -> LiveServer:
        server = LiveServer(repository, folder / f"server-{len(servers)}.log", env)
        servers.append(server)
        if wait:
            server.wait_ready(timeout)
        return server

    return start, servers


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Factory: `live_server(repository, env={...}, wait=True)` starts a real service process of the test's own
    (restarts, signals, a poisoned state); stopped (SIGTERM) after the test."""
    start, servers = _server_factory(tmp_path)
    yield start
    for server in servers:
        server.terminate()


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LiveServer]]:
    """Module-scoped factory: `serve(repository, env={...})` is a ready `python -m service` process on
    127.0.0.1, shared by the module's tests and stopped (SIGTERM) after them."""
    start, servers = _server_factory(tmp_path_factory.mktemp("served"))
    yield start
    for server in servers:
        server.terminate()


@pytest.fixture(scope="module")
def asgi_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., InProcessService]]:
    """Module-scoped factory: `asgi_service(repository, **settings)` is the app in this process, called through
    httpx's ASGITransport (validation and error paths without a subprocess per case)."""
    services: list[InProcessService] = []
    folder = tmp_path_factory.mktemp("asgi")

    def start(repository: Path, **settings: object) -> InProcessService:
        service = InProcessService(repository, folder / f"state-{len(services)}", **settings)
        services.append(service)
        return service

    yield start
    for service in services:
        service.close()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("tiny-train"))


@pytest.fixture(scope="session")
def slow_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real but deliberately expensive tiny model (~50 ms per batch of 8 on one CPU thread)."""
    return train_tiny(tmp_path_factory.mktemp("slow-train"), hidden=1024, repeats=200, steps=0)


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """`tiny` (ONNX, v1) and `tiny_ts` (TorchScript, v1)."""
    repository = tmp_path_factory.mktemp("repo")
    export_tiny(tiny_checkpoint, repository, "tiny")
    export_tiny(tiny_checkpoint, repository, "tiny_ts", format="torchscript")
    return repository
