"""Client disconnects and graceful drain through Ray Serve, on the session cluster.

A third application ("slow", route_prefix /slow): traffic with two replicas whose batcher waits a fixed
2 s for a batch of 64 to fill, so every request sits in a replica's queue for about 2 s: long enough to hang
up on it, or to stop its replica under it."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

pytestmark = pytest.mark.ray

DELAY_MS = 2000


@pytest.fixture(scope="module")
def slow(ray_service, traffic_repository_with, tmp_path_factory: pytest.TempPathFactory,
         extra_app) -> Iterator[tuple[str, dict]]:
    repository = traffic_repository_with("slow", max_batch_size=64, max_queue_delay_ms=DELAY_MS,
                                         delay_policy="fixed", max_queue_size=256)
    state = tmp_path_factory.mktemp("slow-state")
    args = {"repository": str(repository), "replicas": 2, "ingress_replicas": 1, "num_cpus": 0.25,
            "state_dir": str(state), "metrics_dir": str(state / "targets"), "graceful_shutdown_timeout_s": 20,
            # a fresh replica takes the backlog queued while none ran: its preprocessing queue fits it
            "settings": {"device": "cpu", "max_pending_work": 512}}
    with extra_app("slow", args) as url:
        yield url, args


def _replicas(app: str = "slow", calls: int = 30) -> dict[str, dict]:
    handle = serve.get_deployment_handle("traffic", app_name=app)
    seen: dict[str, dict] = {}
    for _ in range(calls):
        described = handle.describe.remote().result(timeout_s=30)
        seen[described["replica"]] = described
    return seen


def _counters(address: str) -> Counter:
    """The replica's batcher counters: requests by outcome, rejections by reason, batches run."""
    text = httpx.get(f"http://{address}/metrics", timeout=10).text
    out: Counter = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "inference_requests_total":
                out[f"outcome:{sample.labels['outcome']}"] += sample.value
            elif sample.name == "inference_rejections_total":
                out[f"rejected:{sample.labels['reason']}"] += sample.value
            elif sample.name == "inference_batch_size_count":
                out["batches"] += sample.value
    return out


def _hang_up(url: str, body: bytes, after_s: float) -> None:
    """Send one request over a raw connection and close it before the answer can come."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        time.sleep(after_s)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # nothing answered yet: still in a replica's queue
            assert sock.recv(1) == b"", "answered before the client hung up"


def test_client_disconnect_drops_the_replicas_work(slow, forecast_body: dict) -> None:
    url, _ = slow
    replicas = _replicas()
    assert len(replicas) == 2, replicas
    before = {name: _counters(d["metrics"]) for name, d in replicas.items()}
    body = json.dumps(forecast_body).encode()
    hung_up = 8
    started = time.monotonic()
    with ThreadPoolExecutor(hung_up) as pool:
        list(pool.map(lambda _: _hang_up(f"{url}/traffic/forecast", body, 0.5), range(hung_up)))
    time.sleep(DELAY_MS / 1000 + 1.5)  # past the batch delay: a batch holding them would have run by now
    after = {name: _counters(d["metrics"]) for name, d in replicas.items()}
    delta = sum((after[n] - before[n] for n in replicas), Counter())
    print(f"\n{hung_up} clients hung up after 0.5 s (batch delay {DELAY_MS} ms): replica counters changed by "
          f"{dict(delta)}, per replica {[dict(after[n] - before[n]) for n in replicas]} "
          f"({time.monotonic() - started:.1f} s)")
    assert delta["rejected:disconnected"] == hung_up and delta["outcome:cancelled"] == hung_up, delta
    assert delta["batches"] == 0 and delta["outcome:success"] == 0, delta  # never computed
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(8) as pool:  # the replicas keep answering
        answers = list(pool.map(lambda _: client.post(f"{url}/traffic/forecast", json=forecast_body), range(8)))
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]


def _replica_states(app: str = "slow") -> dict[str, int]:
    states = serve.status().applications[app].deployments["traffic"].replica_states
    return {str(getattr(k, "value", k)): v for k, v in states.items()}


def test_stopping_replicas_answer_what_they_hold(slow, forecast_body: dict) -> None:
    """The app redeployed with one replica fewer while a steady stream of requests (10/s, each ~2 s in a
    batch queue) runs: Serve replaces the replicas (serve.run gives the code a new version), stopping the old
    ones gracefully. Every request is answered 200, those an old replica held when it began to stop too, and
    what is sent once the update is done goes to the new replica."""
    from deploy.ray.serve_app import build_app

    url, args = slow
    before = set(_replicas())
    assert len(before) == 2, before
    records: list[tuple[float, float, int, str]] = []  # (sent, answered, status, replica), monotonic
    lock = threading.Lock()

    def send(client: httpx.Client) -> None:
        sent = time.monotonic()
        try:
            answer = client.post(f"{url}/traffic/forecast", json=forecast_body)
            status, replica = answer.status_code, answer.headers.get("x-replica", "")
            if status != 200:
                replica += f" {answer.text[:200]}"
        except httpx.HTTPError as exc:
            status, replica = 0, type(exc).__name__
        with lock:
            records.append((sent, time.monotonic(), status, replica))

    redeploy = threading.Thread(target=serve.run, args=(build_app({**args, "replicas": 1}),),
                                kwargs={"name": "slow", "route_prefix": "/slow", "blocking": False})
    stopping_at: float | None = None
    states_seen: list[dict[str, int]] = []
    finished = threading.Event()

    def watch_states() -> None:  # the controller's view, every 0.1 s: when the first old replica starts stopping
        nonlocal stopping_at
        while not finished.is_set():
            states = _replica_states()
            if not states_seen or states != states_seen[-1]:
                states_seen.append(states)
            if stopping_at is None and states.get("STOPPING"):
                stopping_at = time.monotonic()
            time.sleep(0.1)

    watcher = threading.Thread(target=watch_states)
    watcher.start()
    started = time.monotonic()
    done_at: float | None = None
    try:
        with httpx.Client(timeout=90, limits=httpx.Limits(max_connections=256)) as client, \
                ThreadPoolExecutor(200) as pool:
            futures = []
            next_send = started
            while done_at is None or time.monotonic() < done_at + 3.0:
                now = time.monotonic()
                while next_send <= now:  # 10 requests/s, steadily
                    futures.append(pool.submit(send, client))
                    next_send += 0.1
                if now - started > 2.5 and redeploy.ident is None:
                    redeploy.start()  # the stream is steady: both replicas hold ~2 s of requests
                if done_at is None and redeploy.ident is not None and not redeploy.is_alive():
                    done_at = time.monotonic()
                assert now - started < 240, "redeploy did not finish"
                time.sleep(0.02)
            for future in futures:
                future.result()
    finally:
        finished.set()
        watcher.join()
    after = set(_replicas())
    statuses = Counter(status for *_, status, _ in records)
    assert stopping_at is not None, states_seen
    held = [r for r in records if r[3] in before and r[0] < stopping_at < r[1]]
    late = [r for r in records if r[0] > done_at]
    held_for = max((r[1] - stopping_at for r in held), default=0.0)
    slowest = max(r[1] - r[0] for r in records)
    print(f"\n{len(records)} requests at 10/s over a redeploy 2 -> 1 replica ({done_at - started - 2.5:.1f} s): "
          f"{dict(statuses)}, slowest {slowest:.1f} s; replica states {states_seen}; by replica "
          f"{dict(Counter(r[3] for r in records))}; held by an old replica when the stop began: {len(held)} "
          f"({dict(Counter(r[2] for r in held))}, answered up to {held_for:.1f} s after); "
          f"sent after the update: {len(late)} -> {dict(Counter(r[3] for r in late))}")
    assert len(after) == 1 and not after & before, (before, after)
    assert statuses == {200: len(records)}, [r for r in records if r[2] != 200]  # none lost
    assert held, "no request was in flight on a stopping replica"
    assert late and {r[3] for r in late} == after, late
