"""The service's semantics through Ray Serve: full queues -> 429 + Retry-After (the replica's batcher and Ray's
own queue), deadlines -> 504, readiness only while every deployment has a warm replica, threads pinned.

A second application ("tight", route_prefix /tight) on the session cluster: one traffic replica whose manifest
allows one queued request, Ray's queue in front of it bounded at 2."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from ray import serve

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def tight(ray_service, traffic_repository_with, tmp_path_factory: pytest.TempPathFactory,
          extra_app) -> Iterator[str]:
    repository = traffic_repository_with("tight", max_batch_size=1, max_queue_size=1)
    state = tmp_path_factory.mktemp("tight-state")
    args = {"repository": str(repository), "replicas": 1, "ingress_replicas": 1, "num_cpus": 0.25,
            "state_dir": str(state), "metrics_dir": str(state / "targets"), "max_queued_requests": 2,
            "graceful_shutdown_timeout_s": 2, "settings": {"device": "cpu"}}
    with extra_app("tight", args) as url:
        yield url


def test_full_queues_answer_429_with_retry_after(tight: str, forecast_body: dict) -> None:
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=64)) as client, \
            ThreadPoolExecutor(48) as pool:
        answers = list(pool.map(lambda _: client.post(f"{tight}/traffic/forecast", json=forecast_body), range(240)))
    statuses = Counter(a.status_code for a in answers)
    rejected = [a for a in answers if a.status_code == 429]
    by = Counter(a.headers.get("x-replica", "").split("#")[0] for a in rejected)
    print(f"\n240 requests, 48 concurrent, batcher queue 1, Ray queue 2: {dict(statuses)}; 429 made by {dict(by)}")
    assert set(statuses) <= {200, 429} and statuses[200] > 0, statuses
    assert by["traffic"] > 0, by  # the replica's own 429 reaches the client through the ingress
    for answer in rejected:
        assert int(answer.headers["retry-after"]) >= 1, answer.headers
        assert answer.json()["error"]["code"] == "overloaded", answer.text


def test_deadline_answers_504(ray_service, forecast_body: dict) -> None:
    with httpx.Client(base_url=ray_service.url, timeout=60) as client:
        late = client.post("/traffic/forecast", json=forecast_body, headers={"X-Request-Timeout-Ms": "1"})
        assert late.status_code == 504, late.text
        assert late.json()["error"]["code"] == "deadline_exceeded" and "x-replica" in late.headers
        in_time = client.post("/traffic/forecast", json=forecast_body, headers={"X-Request-Timeout-Ms": "30000"})
        assert in_time.status_code == 200, in_time.text


def test_threads_pinned_to_the_cpu_share(ray_service) -> None:
    for family in ("traffic", "weld"):
        handle = serve.get_deployment_handle(family, app_name="service")
        seen = {}
        for _ in range(20):  # both replicas
            described = handle.describe.remote().result(timeout_s=30)
            seen[described["replica"]] = described
        assert len(seen) == 2, seen
        for described in seen.values():  # num_cpus 0.25 -> one thread
            assert (described["cpu_threads"], described["torch_threads"], described["omp_threads"]) == (1, 1, "1")


def test_ready_only_while_every_deployment_has_a_warm_replica(tight: str, forecast_body: dict) -> None:
    handle = serve.get_deployment_handle("traffic", app_name="tight")
    victim = handle.describe.remote().result(timeout_s=30)
    assert httpx.get(f"{tight}/v2/health/ready", timeout=30).status_code == 200
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    states = []
    deadline = killed_at + 180
    while time.monotonic() < deadline:
        ready = httpx.get(f"{tight}/v2/health/ready", timeout=30)
        states.append(ready.status_code)
        if ready.status_code == 503:
            assert ready.json()["deployments"] == {"traffic": False}, ready.text
        if ready.status_code == 200 and 503 in states:
            break
        time.sleep(0.2)
    print(f"\nreadiness after SIGKILL of the only replica: {Counter(states)}; "
          f"ready again after {time.monotonic() - killed_at:.1f} s")
    assert 503 in states and states[-1] == 200, states
    answer = httpx.post(f"{tight}/traffic/forecast", json=forecast_body, timeout=30)
    assert answer.status_code == 200 and answer.headers["x-replica"] != victim["replica"], answer.headers
