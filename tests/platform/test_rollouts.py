"""Issue 31: safe rollouts on a live process (uvicorn on 127.0.0.1, real HTTP). Two traffic versions exported
with the project's CLI (`python -m export traffic`) from the shipped checkpoint: v1 served from the start, v2
exported while it serves, then shadowed, canaried at 50 % and promoted under concurrent requests; the admin
token is required for every rollout route. Plus the pure parts (policy verdicts, answer comparison)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from benchmarks.harness import ROOT, LiveServer
from service.families import metric_builders, specs
from service.metrics import Metrics
from service.rollouts.controller import decide
from service.rollouts.quality import compare, difference, figures, snapshot
from service.rollouts.state import Policy, RolloutBody

TOKEN = "rollout-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
SHIPPED = ROOT / "models" / "traffic" / "traffic-research.pt"
ORIGIN = datetime(2012, 5, 7, 8, 0)  # a Monday morning inside the supported range


def export_version(repository: Path, version: int) -> None:
    """The user's command: `python -m export traffic --checkpoint ... --version N` (ONNX only, for time)."""
    result = subprocess.run([sys.executable, "-m", "export", "traffic", "--checkpoint", str(SHIPPED),
                             "--repository", str(repository), "--version", str(version), "--no-torchscript"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("rollout-repo")
    export_version(repo, 1)
    return repo


@pytest.fixture(scope="module")
def server(serve, repository: Path) -> LiveServer:
    # A short policy-free setup; SERVICE_INSTANCES=1 keeps two versions' sessions light on a 2-core machine.
    return serve(repository, env={"SERVICE_ADMIN_TOKEN": TOKEN})


@pytest.fixture(scope="module")
def sensor_ids(server: LiveServer) -> list[str]:
    return httpx.get(f"{server.url}/traffic/sensors", timeout=30).json()["sensor_ids"]


def window(sensor_ids: list[str], origin: datetime, seed: int) -> dict[str, Any]:
    values = np.random.default_rng(seed).uniform(35, 65, size=(len(sensor_ids), 12)).round(1).tolist()
    return {"sensor_ids": sensor_ids, "values": values, "last_timestamp": origin.isoformat()}


def forecast(client: httpx.Client, sensor_ids: list[str], origin: datetime, seed: int = 0,
             headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post("/traffic/forecast", json={"windows": [window(sensor_ids, origin, seed)]},
                       headers=headers or {})


def report(client: httpx.Client) -> dict[str, Any]:
    answer = client.get("/admin/rollouts/traffic", headers=AUTH)
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_for(client: httpx.Client, done, what: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = report(client)
        if done(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s: {state}")
        time.sleep(0.2)


def test_rollout_routes_need_the_admin_token(server: LiveServer) -> None:
    body = {"candidate": "2", "mode": "shadow"}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for method, path in (("PUT", "/admin/rollouts/traffic"), ("GET", "/admin/rollouts/traffic"),
                             ("POST", "/admin/rollouts/traffic/promote"), ("DELETE", "/admin/rollouts/traffic")):
            kwargs = {"json": body} if method == "PUT" else {}
            assert client.request(method, path, **kwargs).status_code == 401, (method, path)
            wrong = client.request(method, path, headers={"authorization": "Bearer nope"}, **kwargs)
            assert wrong.status_code == 403, (method, path)
        # Nothing started: the served version still answers everything.
        assert client.get("/admin/rollouts/traffic", headers=AUTH).status_code == 404


def test_shadow_canary_and_promotion_on_a_live_process(server: LiveServer, repository: Path,
                                                       sensor_ids: list[str]) -> None:
    client = httpx.Client(base_url=server.url, timeout=60)
    first = forecast(client, sensor_ids, ORIGIN - timedelta(days=1))
    assert first.status_code == 200 and first.headers["x-model-version"] == "1"

    # ---- a new version exported while v1 serves: nothing changes until a rollout names it --------------------
    export_version(repository, 2)
    assert forecast(client, sensor_ids, ORIGIN - timedelta(days=1)).headers["x-model-version"] == "1"
    bad = client.put("/admin/rollouts/traffic", json={"candidate": "9", "mode": "shadow"}, headers=AUTH)
    assert bad.status_code == 404, bad.text
    started = client.put("/admin/rollouts/traffic", json={"candidate": "2", "mode": "shadow"}, headers=AUTH)
    assert started.status_code == 200, started.text
    assert started.json()["baseline"] == "1" and started.json()["candidate"] == "2"

    # ---- shadow: v1 answers every request, v2 gets a copy off the response path --------------------------
    origins = [ORIGIN + timedelta(hours=k) for k in range(6)]
    for k, origin in enumerate(origins):
        answer = forecast(client, sensor_ids, origin, seed=k)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-model-version"] == "1" and answer.json()["version"] == 1
    oip = client.post("/v2/models/traffic/infer", json={"inputs": [{
        "name": "x", "datatype": "FP32", "shape": [1, 12, len(sensor_ids), 2],
        "data": [0.1] * (12 * len(sensor_ids) * 2)}]})
    assert oip.status_code == 200 and oip.headers["x-model-version"] == "1" and oip.json()["model_version"] == "1"
    wait_for(client, lambda s: s["shadow"]["run"] >= len(origins) + 1, "shadow copies run")

    # Ground truth for the forecasts' targets: scored against each version's own kept forecasts.
    for origin in origins:
        stamps = [(origin + timedelta(minutes=5 * h)).isoformat() for h in range(1, 13)]
        truth = {"windows": [{"sensor_ids": sensor_ids, "timestamps": stamps,
                              "values": [[50.0] * 12 for _ in sensor_ids]}]}
        scored = client.post("/traffic/observations", json=truth, headers=AUTH)
        assert scored.status_code == 200, scored.text
        assert scored.headers["x-model-version"] == "1" and scored.json()["matched"] == 12 * len(sensor_ids)
    points = len(origins) * 12 * len(sensor_ids)
    state = wait_for(client, lambda s: s["versions"]["2"]["quality"]["scored"] >= points
                     and s["shadow"]["run"] >= 2 * len(origins) + 1, "candidate scored from observations")
    base, cand = state["versions"]["1"], state["versions"]["2"]
    assert set(base["quality"]["mae_per_horizon"]) == set(cand["quality"]["mae_per_horizon"]) == \
        {str(h) for h in range(1, 13)}
    assert base["quality"]["scored"] == cand["quality"]["scored"] == points
    # The same checkpoint twice: the same forecasts, so the same errors and (almost) no difference.
    assert cand["quality"]["mae"] == pytest.approx(base["quality"]["mae"], rel=1e-4)
    assert state["comparison"]["compared"] >= len(origins) + 1
    assert state["comparison"]["mean_abs_difference"] < 1e-3
    assert base["live"]["requests"] >= len(origins) and base["live"]["latency_p50_ms"] > 0
    # Observations are copied to the candidate but are not inference: out of the requests and latency figures.
    assert base["live"]["requests"] == len(origins) + 1 and state["shadow"]["run"] == 2 * len(origins) + 1
    assert cand["live"]["requests"] == 0 and cand["shadow"]["requests"] == len(origins) + 1
    assert cand["shadow"]["errors"] == 0 and state["shadow"]["dropped"] == {}
    metrics = client.get("/metrics").text
    assert 'rollout_active{mode="shadow",model="traffic"} 1.0' in metrics
    assert 'rollout_version_role{model="traffic",role="candidate",version="2"} 1.0' in metrics
    assert 'quality_forecast_points_total{horizon="1",model="traffic",predictor="model",version="2"}' in metrics

    # ---- canary at 50 %: both versions answer; a rollout key sticks to one side -------------------------
    canary = client.put("/admin/rollouts/traffic", json={"candidate": 2, "mode": "canary", "percent": 50},
                        headers=AUTH)
    assert canary.status_code == 200 and canary.json()["mode"] == "canary", canary.text
    seen = [forecast(client, sensor_ids, ORIGIN, seed=k).headers["x-model-version"] for k in range(40)]
    assert set(seen) == {"1", "2"}, seen
    for key in ("client-a", "client-b", "client-c"):
        sticky = {forecast(client, sensor_ids, ORIGIN, headers={"x-rollout-key": key}).headers["x-model-version"]
                  for _ in range(6)}
        assert len(sticky) == 1, (key, sticky)
    state = report(client)
    assert state["versions"]["1"]["live"]["requests"] > 0 and state["versions"]["2"]["live"]["requests"] > 0

    # ---- promotion under concurrent requests: none fails, then only v2 answers --------------------------
    outcomes: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def load(seed: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as own:
            k = 0
            while not stop.is_set():
                sent_at = time.monotonic()  # a request sent after the promotion answered must get v2
                answer = forecast(own, sensor_ids, ORIGIN, seed=seed * 1000 + k)
                outcomes.append((sent_at, answer.status_code, answer.headers.get("x-model-version", "")))
                k += 1

    # One request resolved to v1 before the swap whose body arrives after it: the window (body read and
    # preprocessing) in which a swap would strand a request on a draining version. Its key lands on v1
    # (the canary's hash: blake2b of model and key, below `percent` -> candidate).
    key = next(k for k in (f"slow-{n}" for n in range(1000)) if int.from_bytes(hashlib.blake2b(
        f"traffic\0{k}".encode(), digest_size=8).digest(), "big") % 10_000 / 100 >= 50)
    gate = threading.Event()
    payload = json.dumps({"windows": [window(sensor_ids, ORIGIN, 7)]}).encode()
    slow: dict[str, httpx.Response] = {}

    def slow_body() -> Iterator[bytes]:
        yield payload[:100]
        gate.wait(60)
        yield payload[100:]

    def slow_request() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as own:
            slow["answer"] = own.post("/traffic/forecast", content=slow_body(),
                                      headers={"content-type": "application/json", "x-rollout-key": key})

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    threads.append(threading.Thread(target=slow_request))
    for thread in threads:
        thread.start()
    time.sleep(3.0)
    promoted = client.post("/admin/rollouts/traffic/promote", headers=AUTH)
    promoted_at = time.monotonic()
    gate.set()
    time.sleep(3.0)
    stop.set()
    for thread in threads:
        thread.join(60)
    assert slow["answer"].status_code == 200, slow["answer"].text  # not a 503 from v1's draining batcher
    assert slow["answer"].headers["x-model-version"] == "2" and slow["answer"].json()["version"] == 2
    assert promoted.status_code == 200 and promoted.json()["state"] == "promoted", promoted.text
    assert outcomes and all(code == 200 for _, code, _ in outcomes), [o for o in outcomes if o[1] != 200][:5]
    during = [v for at, _, v in outcomes if at < promoted_at]
    after = [v for at, _, v in outcomes if at > promoted_at]
    assert {"1", "2"} <= set(during) and after and set(after) == {"2"}, (set(during), set(after))
    for _ in range(10):
        assert forecast(client, sensor_ids, ORIGIN).headers["x-model-version"] == "2"
    ready = client.get("/v2/models/traffic")
    assert ready.headers["x-model-version"] == "2" and "2" in ready.json()["versions"]
    assert report(client)["state"] == "promoted"
    assert client.post("/admin/rollouts/traffic/promote", headers=AUTH).status_code == 404
    metrics = client.get("/metrics").text
    assert 'rollout_decisions_total{decision="promote",model="traffic"} 1.0' in metrics
    assert 'rollout_active{mode="canary",model="traffic"} 0.0' in metrics
    client.close()


def test_policy_rolls_a_slow_candidate_back_on_a_live_process(server: LiveServer, repository: Path,
                                                              sensor_ids: list[str]) -> None:
    """Item 3: a canary at 100 % whose p99 passes the policy's bound is rolled back automatically; the
    decision is in the report and counted; the served version answers again."""
    if not (repository / "traffic" / "2").is_dir():  # run alone: the version the previous test exports
        export_version(repository, 2)
    client = httpx.Client(base_url=server.url, timeout=60)
    served = forecast(client, sensor_ids, ORIGIN).headers["x-model-version"]
    other = "1" if served == "2" else "2"
    policy = {"max_p99_ms": 0.001, "min_requests": 3, "interval_s": 0.2}  # every request is slower than 1 us
    started = client.put("/admin/rollouts/traffic", headers=AUTH,
                         json={"candidate": other, "mode": "canary", "percent": 100, "policy": policy})
    assert started.status_code == 200, started.text
    answered = {forecast(client, sensor_ids, ORIGIN, seed=k).headers["x-model-version"] for k in range(3)}
    assert answered == {other}
    deadline = time.monotonic() + 60
    while (state := report(client))["state"] == "running":
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
    assert state["state"] == "rolled_back" and state["decisions"][-1]["decision"] == "auto_rollback"
    assert "p99" in state["decisions"][-1]["why"]
    assert {forecast(client, sensor_ids, ORIGIN).headers["x-model-version"] for _ in range(5)} == {served}
    assert 'rollout_decisions_total{decision="auto_rollback",model="traffic"} 1.0' in client.get("/metrics").text
    client.close()


def test_shadow_copies_are_dropped_and_counted_when_behind(server: LiveServer, repository: Path,
                                                           sensor_ids: list[str]) -> None:
    """A queue of one copy under 8 concurrent clients: every live request answers 200 from the baseline, the
    copies that do not fit are dropped and counted (report and rollout_shadow_dropped_total)."""
    if not (repository / "traffic" / "2").is_dir():
        export_version(repository, 2)
    client = httpx.Client(base_url=server.url, timeout=60)
    served = forecast(client, sensor_ids, ORIGIN).headers["x-model-version"]
    other = "1" if served == "2" else "2"
    started = client.put("/admin/rollouts/traffic", headers=AUTH,
                         json={"candidate": other, "mode": "shadow", "shadow_queue": 1})
    assert started.status_code == 200, started.text
    answers: list[httpx.Response] = []

    def burst(seed: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as own:
            answers.extend(forecast(own, sensor_ids, ORIGIN, seed=seed * 100 + k) for k in range(3))

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(answers) == 24 and all(a.status_code == 200 for a in answers)
    assert {a.headers["x-model-version"] for a in answers} == {served}
    state = wait_for(client, lambda s: s["shadow"]["queued"] == 0 and
                     s["shadow"]["run"] + sum(s["shadow"]["dropped"].values()) == 24, "every copy run or dropped")
    assert state["shadow"]["dropped"].get("queue_full", 0) >= 1, state["shadow"]
    metrics = client.get("/metrics").text
    assert f'rollout_shadow_dropped_total{{model="traffic",reason="queue_full",version="{other}"}}' in metrics
    assert client.delete("/admin/rollouts/traffic", headers=AUTH).json()["state"] == "ended"
    assert {forecast(client, sensor_ids, ORIGIN).headers["x-model-version"] for _ in range(3)} == {served}
    client.close()


# ---- the pure parts ------------------------------------------------------------------------------------

def _report(cand_quality: dict[str, Any], base_quality: dict[str, Any], requests: int = 50, errors: int = 0,
            p99: float = 10.0) -> dict[str, Any]:
    live = {"requests": requests, "errors": errors, "latency_p99_ms": p99}
    return {"versions": {"2": {"live": live, "shadow": None, "quality": cand_quality},
                         "1": {"live": live, "shadow": None, "quality": base_quality}}}


def test_policy_promotes_on_quality_and_rolls_back_on_errors_or_p99() -> None:
    policy = Policy(promote_margin=0.05, min_scored=100, max_error_rate=0.02, max_p99_ms=200)
    better = {"figure": "mae", "mae": 4.0, "scored": 500}
    baseline = {"figure": "mae", "mae": 5.0, "scored": 500}
    assert decide(policy, _report(better, baseline), "2", "1")[0] == "auto_promote"
    close = {"figure": "mae", "mae": 4.9, "scored": 500}  # 2 % better: under the 5 % margin
    assert decide(policy, _report(close, baseline), "2", "1") is None
    few = {"figure": "mae", "mae": 1.0, "scored": 10}  # not enough scored points
    assert decide(policy, _report(few, baseline), "2", "1") is None
    assert decide(policy, _report(better, baseline, errors=5), "2", "1")[0] == "auto_rollback"
    assert decide(policy, _report(better, baseline, p99=900), "2", "1")[0] == "auto_rollback"
    psnr = {"figure": "psnr_db", "psnr_db": 33.0, "higher_is_better": True, "scored": 500}
    psnr_base = {"figure": "psnr_db", "psnr_db": 30.0, "higher_is_better": True, "scored": 500}
    assert decide(policy, _report(psnr, psnr_base), "2", "1")[0] == "auto_promote"
    assert decide(policy, _report(psnr_base, psnr), "2", "1") is None


def test_answer_comparison_and_body_checks() -> None:
    a = b'{"forecasts": [{"values": [[1.0, 2.0], [3.0, 4.0]]}]}'
    b = b'{"forecasts": [{"values": [[1.5, 2.0], [3.0, 2.0]]}]}'
    assert compare(a, b) == (pytest.approx(0.625), None)
    same = b'{"results": [{"class": "Porosity"}, {"class": "Spatter"}]}'
    other = b'{"results": [{"class": "Porosity"}, {"class": "Good"}]}'
    assert compare(same, same) == (None, True) and compare(same, other) == (None, False)
    assert compare(b"\x00binary", b"\x00binary") == (None, None)
    assert RolloutBody.model_validate({"candidate": "2", "mode": "canary", "percent": 50}).candidate == 2
    for bad in ({"candidate": "+2", "mode": "shadow"}, {"candidate": 2, "mode": "blue"},
                {"candidate": 2, "mode": "canary", "percent": 101}, {"candidate": True, "mode": "shadow"},
                {"candidate": 2, "mode": "shadow", "shadow_percent": -1}, {"candidate": 2, "mode": "x", "extra": 1}):
        with pytest.raises(ValueError):
            RolloutBody.model_validate(bad)


def test_quality_figures_per_family_cover_the_rollout_only() -> None:
    """The version-labelled quality counters, minus their values at the rollout's start, per family."""
    metrics = Metrics(metric_builders())  # with every family's own series
    registry = metrics.registry
    q, w, c, r = (metrics.family(name, specs()[name].metrics) for name in ("traffic", "weld", "imagecodec", "water"))
    q.forecast_abs_error.labels("traffic", "1", "1", "model").inc(100)  # before the rollout: not counted
    q.forecast_points.labels("traffic", "1", "1", "model").inc(10)
    start = snapshot(registry, "traffic")
    for version, error in (("1", 40.0), ("2", 20.0)):
        q.forecast_abs_error.labels("traffic", version, "1", "model").inc(error)
        q.forecast_points.labels("traffic", version, "1", "model").inc(10)
        q.forecast_abs_error.labels("traffic", version, "1", "last_value").inc(999)  # not the model's error
        q.forecast_points.labels("traffic", version, "1", "last_value").inc(10)
    q.forecast_abs_error.labels("traffic-other", "1", "1", "model").inc(5)  # another model
    now = snapshot(registry, "traffic")
    v1, v2 = (figures("traffic", difference(now, start, v)) for v in ("1", "2"))
    assert v1["mae_per_horizon"] == {"1": 4.0} and v1["scored"] == 10 and v1["mae"] == 4.0
    assert v2["mae"] == 2.0 and v2["figure"] == "mae"

    start = snapshot(registry, "weld")
    w.predictions.labels("weld", "2", "Good").inc(8)
    w.predictions.labels("weld", "2", "Porosity").inc(2)
    w.ood_samples.labels("weld", "2").inc(1)
    weld = figures("weld", difference(snapshot(registry, "weld"), start, "2"))
    assert weld["ood_share"] == pytest.approx(0.1) and weld["scored"] == 10

    c.bpp.labels("imagecodec-q2", "2", "2").observe(0.5)
    c.bpp.labels("imagecodec-q2", "2", "2").observe(0.3)
    c.psnr.labels("imagecodec-q2", "2", "2").observe(31.0)
    codec = figures("imagecodec", difference(snapshot(registry, "imagecodec-q2"), {}, "2"))
    assert codec["bpp"] == pytest.approx(0.4) and codec["psnr_db"] == 31.0 and codec["higher_is_better"]

    r.selfcheck_abs_error.labels("water", "3", "flow").inc(0.5)
    r.selfcheck_points.labels("water", "3", "flow").inc(5)
    assert figures("water", difference(snapshot(registry, "water"), {}, "3"))["selfcheck_mae"] == pytest.approx(0.1)
