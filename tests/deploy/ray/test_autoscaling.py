"""Autoscaling on load through Ray Serve (slow): a family sized to its batcher goes from 1 to 2 replicas while
clients keep more than a batch in flight per replica, and back to 1 once the load stops.

A second application ("auto", route_prefix /auto) on the session cluster: traffic with batches of 4, so the
autoscaling target (deploy/ray/topology.py: a full batch per replica) is 4 requests in flight; 24 closed-loop
clients keep about 6 times that in flight. Delays shortened so the test takes a minute, not Serve's 30 s up /
600 s down."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from ray import serve

pytestmark = [pytest.mark.ray, pytest.mark.slow]
BATCH = 4


@pytest.fixture(scope="module")
def autoscaled(ray_service, traffic_repository_with, tmp_path_factory: pytest.TempPathFactory,
               extra_app) -> Iterator[str]:
    repository = traffic_repository_with("auto", max_batch_size=BATCH)
    state = tmp_path_factory.mktemp("auto-state")
    args = {"repository": str(repository), "ingress_replicas": 1, "num_cpus": 0.25, "state_dir": str(state),
            "metrics_dir": None, "graceful_shutdown_timeout_s": 2, "settings": {"device": "cpu"},
            "replicas": "auto", "autoscaling": {"traffic": {"min_replicas": 1, "max_replicas": 2,
                                                            "upscale_delay_s": 3, "downscale_delay_s": 8,
                                                            "metrics_interval_s": 0.5, "look_back_period_s": 3}}}
    with extra_app("auto", args) as url:
        yield url


def _running(app: str = "auto") -> int:
    status = serve.status().applications[app].deployments["traffic"]
    return int(status.replica_states.get("RUNNING", 0))


def test_load_scales_a_family_from_one_to_two_replicas_and_back(autoscaled: str, forecast_body: dict) -> None:
    assert _running() == 1  # min_replicas
    stop = threading.Event()
    seen: Counter[str] = Counter()
    statuses: Counter[int] = Counter()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                answer = http.post(f"{autoscaled}/traffic/forecast", json=forecast_body)
                statuses[answer.status_code] += 1
                seen[answer.headers.get("x-replica", "?")] += 1

    started = time.monotonic()
    with ThreadPoolExecutor(24) as pool:
        for _ in range(24):
            pool.submit(client)
        try:
            while _running() < 2 and time.monotonic() - started < 120:
                time.sleep(0.5)
            scaled_up = time.monotonic() - started
            assert _running() == 2, serve.status().applications["auto"].deployments["traffic"]
            time.sleep(5)  # both replicas now take the load
        finally:
            stop.set()
    assert len(seen) == 2, ("not both replicas answered", seen)
    stopped = time.monotonic()
    while _running() > 1 and time.monotonic() - stopped < 120:
        time.sleep(0.5)
    scaled_down = time.monotonic() - stopped
    print(f"\n24 clients, target {BATCH} in flight per replica: 2 replicas after {scaled_up:.1f} s of load, "
          f"back to 1 {scaled_down:.1f} s after it stopped; answers {dict(statuses)} by {dict(seen)}")
    assert _running() == 1 and set(statuses) == {200}, (statuses, scaled_down)
