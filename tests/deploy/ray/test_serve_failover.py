"""Failover on the local two-node cluster under load: a replica SIGKILLed, then the second node removed.
Runs after test_serve.py (same session cluster; removing the node is the last thing done to it)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

pytestmark = pytest.mark.ray
CLIENTS = 4


class Load:
    """CLIENTS closed-loop clients posting forecasts until stopped; every answer is kept (time, status, replica)."""

    def __init__(self, url: str, body: dict) -> None:
        self.answers: list[tuple[float, int | str, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(url, body)) for _ in range(CLIENTS)]
        for thread in self._threads:
            thread.start()

    def _run(self, url: str, body: dict) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = client.post("/traffic/forecast", json=body)
                    self.answers.append((time.monotonic(), r.status_code, r.headers.get("x-replica", "")))
                except httpx.HTTPError as exc:
                    self.answers.append((time.monotonic(), type(exc).__name__, ""))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def failed(self, since: float = 0.0) -> list:
        return [a for a in self.answers if a[0] >= since and a[1] != 200]

    def replicas(self, since: float = 0.0) -> set[str]:
        return {a[2] for a in self.answers if a[0] >= since and a[1] == 200}


def _targets(service) -> list[dict]:
    labels = []
    for path in service.metrics_dir.glob("*.json"):
        try:
            labels.append(json.loads(path.read_text())[0]["labels"])
        except (OSError, ValueError):
            continue
    return labels


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def test_replica_sigkilled_under_load(ray_service, forecast_body: dict) -> None:
    victim = next(t for t in _targets(ray_service) if t["deployment"] == "traffic")
    load = Load(ray_service.url, forecast_body)
    try:
        time.sleep(3)
        killed_at = time.monotonic()
        os.kill(int(victim["__meta_ray_pid"]), signal.SIGKILL)
        dead = f"traffic#{victim['replica']}"
        # Serve notices the dead actor and starts a new replica; both traffic replicas serve again.
        _wait(lambda: len(load.replicas(time.monotonic() - 3) - {dead}) == 2, 180, "no replacement replica")
        recovered_at = time.monotonic()
        time.sleep(2)
    finally:
        load.stop()
    failed = load.failed()
    print(f"\nSIGKILL of {dead}: {len(load.answers)} requests, {len(failed)} failed {failed[:5]}, "
          f"replacement serving after {recovered_at - killed_at:.1f} s")
    assert load.replicas(killed_at) - {dead}, "the surviving replica did not keep answering"
    # Bounded: at most the requests in flight on the killed replica (each retried once on the other).
    assert len(failed) <= CLIENTS, failed
    assert dead not in load.replicas(killed_at + 1)


def test_node_removed_under_load(ray_service, forecast_body: dict) -> None:
    worker_id = ray_service.worker.node_id
    _wait(lambda: any(t.get("__meta_ray_node_id") == worker_id for t in _targets(ray_service)), 60,
          "no replica on the second node")
    load = Load(ray_service.url, forecast_body)
    try:
        time.sleep(3)
        removed_at = time.monotonic()
        ray_service.cluster.remove_node(ray_service.worker)
        time.sleep(10)
    finally:
        load.stop()
    failed = load.failed()
    late = load.failed(removed_at + 5)
    served_after = [a for a in load.answers if a[0] >= removed_at + 5 and a[1] == 200]
    print(f"\nnode removed: {len(load.answers)} requests, {len(failed)} failed {failed[:5]}, "
          f"{len(served_after)} answered 5-10 s after the removal by {load.replicas(removed_at + 5)}")
    assert served_after, "requests did not continue on the head node"
    assert len(failed) <= 4 * CLIENTS and not late, failed
