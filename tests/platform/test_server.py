"""The real service process on 127.0.0.1: readiness, Open Inference Protocol with tritonclient, batching,
overload, deadlines, shutdown drain, bad input, and the admin repository API."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from benchmarks.harness import export_tiny, metric_value
from families.manifest import Manifest
from service.runtimes import open_runtime

TOKEN = "s3cret-token"


def reference(repository: Path, model: str, version: int, x: np.ndarray) -> dict[str, np.ndarray]:
    version_dir = repository / model / str(version)
    return open_runtime(version_dir, Manifest.read(version_dir).primary, "cpu").run({"x": x})


@pytest.fixture(scope="module")
def slow_repository(tmp_path_factory: pytest.TempPathFactory, slow_checkpoint: Path) -> Path:
    """`slow` with a queue bound of 4 requests and batches of up to 4 rows."""
    repository = tmp_path_factory.mktemp("slow-repo")
    export_tiny(slow_checkpoint, repository, "slow", max_batch_size="4", max_queue_size="4",
                max_queue_delay_ms="0")
    return repository


def test_ready_only_after_warm_up_then_serves(tmp_path: Path, live_server, tiny_checkpoint: Path,
                                              slow_checkpoint: Path) -> None:
    repository = tmp_path / "repo"
    export_tiny(tiny_checkpoint, repository, "tiny")
    # A large warm-up batch makes loading take long enough to observe "live but not ready".
    export_tiny(slow_checkpoint, repository, "slow", max_batch_size="256")
    server = live_server(repository, wait=False)
    seen = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            ready = httpx.get(f"{server.url}/v2/health/ready", timeout=5)
            live = httpx.get(f"{server.url}/v2/health/live", timeout=5)
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        assert live.status_code == 200
        seen.append(ready.status_code)
        if ready.status_code == 200:
            break
        time.sleep(0.05)
    assert seen[0] == 503 and seen[-1] == 200, seen
    assert "loaded slow v1" in server.log()  # warm-up finished before readiness
    assert httpx.get(f"{server.url}/v2/models/slow/ready").status_code == 200


def test_tritonclient_metadata_and_inference_json_and_binary(tiny_repository: Path, live_server) -> None:
    server = live_server(tiny_repository)
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["extensions"]
    for model in ("tiny", "tiny_ts"):
        assert client.is_model_ready(model)
        meta = client.get_model_metadata(model, "1")
        assert meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
        assert [o["name"] for o in meta["outputs"]] == ["y", "norm"]

        x = np.random.default_rng(3).standard_normal((3, 16)).astype(np.float32)
        want = reference(tiny_repository, model, 1, x)
        for binary in (False, True):
            tensor = triton.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            outputs = [triton.InferRequestedOutput("y", binary_data=binary),
                       triton.InferRequestedOutput("norm", binary_data=not binary)]
            result = client.infer(model, [tensor], model_version="1", outputs=outputs)
            np.testing.assert_allclose(result.as_numpy("y"), want["y"], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(result.as_numpy("norm"), want["norm"], rtol=1e-6, atol=1e-6)
            assert result.get_response()["model_version"] == "1"


def test_concurrent_requests_are_batched_and_each_answer_equals_the_unbatched_one(
        tiny_repository: Path, live_server) -> None:
    server = live_server(tiny_repository)
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(64)]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60,
                                     limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(*(client.post("/v2/models/tiny/infer", json={
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": x.ravel().tolist()}]})
                for x in xs))

    responses = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses)
    for x, response in zip(xs, responses, strict=True):
        got = np.asarray(response.json()["outputs"][0]["data"], dtype=np.float32).reshape(1, 4)
        np.testing.assert_allclose(got, reference(tiny_repository, "tiny", 1, x)["y"], rtol=1e-5, atol=1e-5)
    metrics = httpx.get(f"{server.url}/metrics").text
    labels = {"model": "tiny", "version": "1", "queue": "model"}
    batches = metric_value(metrics, "inference_batch_size_count", labels)
    rows = metric_value(metrics, "inference_batch_size_sum", labels)
    singles = metric_value(metrics, "inference_batch_size_bucket", {**labels, "le": "1.0"})
    assert rows >= 64 and batches < rows, (batches, rows)
    assert singles < batches  # some batches held more than one request


def infer_body(x: np.ndarray) -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}


def server_rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))


def test_overload_gets_fast_429_with_bounded_memory_and_service_recovers(slow_repository: Path,
                                                                         live_server) -> None:
    server = live_server(slow_repository, env={"SERVICE_CPU_THREADS": "1"})
    x = np.ones((4, 16), dtype=np.float32)
    body = infer_body(x)
    queue_bound = 4

    async def burst() -> list[tuple[int, float, str | None]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120,
                                     limits=httpx.Limits(max_connections=10 * queue_bound)) as client:
            async def one() -> tuple[int, float, str | None]:
                started = time.perf_counter()
                response = await client.post("/v2/models/slow/infer", json=body)
                return response.status_code, time.perf_counter() - started, response.headers.get("retry-after")

            return await asyncio.gather(*(one() for _ in range(10 * queue_bound)))

    rss_before = server_rss_kb(server.process.pid)
    first = asyncio.run(burst())
    rss_after_one = server_rss_kb(server.process.pid)
    for _ in range(3):
        asyncio.run(burst())
    rss_after_four = server_rss_kb(server.process.pid)

    codes = [code for code, _, _ in first]
    assert set(codes) <= {200, 429}, codes
    rejected = [(elapsed, retry) for code, elapsed, retry in first if code == 429]
    served = codes.count(200)
    assert rejected and served >= 1
    assert all(retry is not None and int(retry) >= 1 for _, retry in rejected)
    assert np.median([elapsed for elapsed, _ in rejected]) < 1.0  # rejected at once, not after queueing
    # Memory: repeated bursts do not keep growing the process (bounded queue, nothing retained).
    assert rss_after_four - rss_after_one < 30_000, (rss_before, rss_after_one, rss_after_four)

    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    after = httpx.post(f"{server.url}/v2/models/slow/infer", json=body, timeout=60)
    assert after.status_code == 200
    metrics = httpx.get(f"{server.url}/metrics").text
    assert metric_value(metrics, "inference_rejections_total",
                        {"model": "slow", "version": "1", "queue": "model", "reason": "queue_full"}) >= len(rejected)


def test_deadline_gives_504_and_the_request_is_never_computed(slow_repository: Path, live_server) -> None:
    server = live_server(slow_repository, env={"SERVICE_CPU_THREADS": "1"})
    x = np.ones((4, 16), dtype=np.float32)
    labels = {"model": "slow", "version": "1", "queue": "model"}

    async def scenario() -> tuple[list[int], httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            busy = [asyncio.create_task(client.post("/v2/models/slow/infer", json=infer_body(x)))
                    for _ in range(3)]
            await asyncio.sleep(0.05)
            late = await client.post("/v2/models/slow/infer", json=infer_body(x),
                                     headers={"X-Request-Timeout-Ms": "5"})
            return [r.status_code for r in await asyncio.gather(*busy)], late

    rows_before = metric_value(httpx.get(f"{server.url}/metrics").text, "inference_batch_size_sum", labels)
    busy_codes, late = asyncio.run(scenario())
    assert busy_codes == [200, 200, 200]
    assert late.status_code == 504
    assert "deadline" in late.json()["error"]
    metrics = httpx.get(f"{server.url}/metrics").text
    # Exactly the three busy requests' rows were computed; the expired one never reached the model.
    assert metric_value(metrics, "inference_batch_size_sum", labels) - rows_before == 12
    assert metric_value(metrics, "inference_rejections_total", {**labels, "reason": "deadline"}) == 1

    # OIP's own timeout parameter (microseconds) behaves the same.
    body = infer_body(x) | {"parameters": {"timeout": 1}}
    assert httpx.post(f"{server.url}/v2/models/slow/infer", json=body, timeout=30).status_code == 504


def test_disconnected_client_is_dropped_before_compute(slow_repository: Path, live_server) -> None:
    server = live_server(slow_repository, env={"SERVICE_CPU_THREADS": "1"})
    x = np.ones((4, 16), dtype=np.float32)
    labels = {"model": "slow", "version": "1", "queue": "model"}

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            busy = [asyncio.create_task(client.post("/v2/models/slow/infer", json=infer_body(x)))
                    for _ in range(3)]
            await asyncio.sleep(0.05)
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/v2/models/slow/infer", json=infer_body(x), timeout=0.02)
            await asyncio.gather(*busy)

    asyncio.run(scenario())
    deadline = time.monotonic() + 10
    dropped = 0.0
    while time.monotonic() < deadline and dropped < 1:
        metrics = httpx.get(f"{server.url}/metrics").text
        dropped = metric_value(metrics, "inference_rejections_total", {**labels, "reason": "disconnected"})
        time.sleep(0.1)
    assert dropped == 1
    assert metric_value(metrics, "inference_batch_size_sum", labels) == 12  # only the 3 busy requests ran


def test_shutdown_answers_every_accepted_request(slow_repository: Path, live_server) -> None:
    server = live_server(slow_repository, env={"SERVICE_CPU_THREADS": "1"})
    x = np.ones((4, 16), dtype=np.float32)

    async def scenario() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            tasks = [asyncio.create_task(client.post("/v2/models/slow/infer", json=infer_body(x)))
                     for _ in range(4)]
            await asyncio.sleep(0.3)  # all four accepted and queued or running
            await asyncio.to_thread(server.terminate)
            return [r.status_code for r in await asyncio.gather(*tasks)]

    codes = asyncio.run(scenario())
    assert codes == [200, 200, 200, 200]
    # uvicorn re-raises SIGTERM after a clean shutdown, so the exit status is -SIGTERM, not a crash code.
    assert server.process.returncode in (0, -15)
    assert "Application shutdown complete" in server.log()


@pytest.fixture(scope="module")
def guarded(tiny_repository: Path, asgi_service):
    """The app in-process (validation and error paths need no socket), with a body limit and an admin token."""
    return asgi_service(tiny_repository, max_request_bytes=65536, admin_token=TOKEN)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"this is not json", 400, "not valid JSON"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 15], "data": ' + json.dumps([0.0] * 15).encode()
         + b"}]}", 400, "axis 1 must be 16"),
        (b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 16], "data": ' + json.dumps([0] * 16).encode()
         + b"}]}", 400, "expected FP32"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [NaN'
         + b", 0" * 15 + b"]}]}", 400, "NaN"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [1e39'
         + b", 0" * 15 + b"]}]}", 400, "NaN or Inf"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16]}]}', 400, "neither 'data'"),
        (b'{"outputs": []}', 400, "'inputs'"),
        (b'{"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 1], "data": [1]}]}', 400, "missing input"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16], "data": [1, 2]}]}', 400, "needs 32"),
        (b'{"inputs": [{"name": "x", "datatype": "STRING", "shape": [1], "data": ["a"]}]}', 400, "datatype"),
        (b'[1, 2]', 400, "JSON object"),
    ],
)
def test_bad_inference_requests_get_a_4xx_naming_the_problem(guarded, body: bytes, status: int,
                                                             needle: str) -> None:
    """Issue 26 item 14: OIP answers every rejected request 400 with {"error": ...}, as Triton and KServe do."""
    response = guarded.post("/v2/models/tiny/infer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]


def test_bad_binary_framing_and_unknown_models(guarded) -> None:
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16],
                                     "parameters": {"binary_data_size": 64}}]}).encode()
    truncated = guarded.post("/v2/models/tiny/infer", content=header + b"\0" * 10,
                           headers={"Inference-Header-Content-Length": str(len(header))})
    assert truncated.status_code == 400 and "truncated" in truncated.json()["error"]
    unknown = guarded.post("/v2/models/nope/infer", json={})
    assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
    wrong_version = guarded.get("/v2/models/tiny/versions/7")
    assert wrong_version.status_code == 404 and "version 7" in wrong_version.json()["error"]
    bad_version = guarded.get("/v2/models/tiny/versions/abc")
    assert bad_version.status_code == 400
    no_route = guarded.get("/no/such/route")
    assert no_route.status_code == 404 and no_route.json()["error"]["code"] == "not_found"


def test_payload_over_the_limit_is_413(guarded) -> None:
    big = np.zeros((2000, 16), dtype=np.float32)
    response = guarded.post("/v2/models/tiny/infer", json=infer_body(big))
    assert response.status_code == 413 and "exceeds" in response.json()["error"]

    async def stream():  # no content-length: the limit is enforced while the body streams in
        for _ in range(100):
            yield b" " * 1024

    assert guarded.post("/v2/models/tiny/infer", content=stream()).status_code == 413
    assert guarded.get("/v2/health/ready").status_code == 200


def test_admin_routes_need_the_bearer_token(guarded, tiny_repository: Path, asgi_service) -> None:
    load = "/v2/repository/models/nope/load"
    assert guarded.post(load).status_code == 401
    assert guarded.post(load, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert guarded.post(load, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404  # past the guard
    # The index is readable without the token, as in Triton (SERVICE_RESTRICT_REPOSITORY_INDEX restricts it).
    index = guarded.post("/v2/repository/index")
    assert index.status_code == 200
    assert {(r["name"], r["version"], r["state"]) for r in index.json()} >= {("tiny", "1", "READY")}
    # Without a configured token load/unload do not exist.
    open_service = asgi_service(tiny_repository)
    assert open_service.post("/v2/repository/models/tiny/unload",
                             headers={"Authorization": "Bearer anything"}).status_code == 404


def test_reload_swaps_versions_without_downtime_and_unload(tmp_path: Path, live_server, tiny_checkpoint: Path,
                                                           slow_checkpoint: Path) -> None:
    repository = tmp_path / "repo"
    export_tiny(tiny_checkpoint, repository, "tiny")
    server = live_server(repository, env={"SERVICE_ADMIN_TOKEN": TOKEN})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    # Version 2 is a different (slow to warm up) network: the answer tells which version served.
    export_tiny(slow_checkpoint, repository, "tiny", max_batch_size="256")
    x = np.ones((1, 16), dtype=np.float32)
    v1, v2 = reference(repository, "tiny", 1, x)["y"], reference(repository, "tiny", 2, x)["y"]

    async def traffic_during_reload() -> tuple[list[tuple[int, str]], httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            load = asyncio.create_task(http.post("/v2/repository/models/tiny/load", headers=auth))
            seen = []
            while not load.done():
                response = await http.post("/v2/models/tiny/infer", json=infer_body(x))
                seen.append((response.status_code, response.json().get("model_version", "")))
            return seen, await load

    seen, load = asyncio.run(traffic_during_reload())
    assert load.status_code == 200 and load.json()["version"] == "2"
    assert seen and all(code == 200 for code, _ in seen)
    assert seen[0][1] == "1"  # the old version kept serving while the new one warmed up
    tensor = triton.InferInput("x", [1, 16], "FP32")
    tensor.set_data_from_numpy(x)
    np.testing.assert_allclose(client.infer("tiny", [tensor]).as_numpy("y"), v2, rtol=1e-5, atol=1e-5)
    assert not np.allclose(v1, v2)
    assert client.get_model_metadata("tiny")["versions"] == ["2"]

    # Explicit version load (rollback), then unload.
    back = httpx.post(f"{server.url}/v2/repository/models/tiny/load", headers=auth,
                      json={"parameters": {"version": "1"}}, timeout=60)
    assert back.status_code == 200 and back.json()["version"] == "1"
    missing = httpx.post(f"{server.url}/v2/repository/models/tiny/load", headers=auth,
                         json={"parameters": {"version": "9"}})
    assert missing.status_code == 404
    assert httpx.post(f"{server.url}/v2/repository/models/tiny/unload", headers=auth).status_code == 200
    gone = httpx.post(f"{server.url}/v2/models/tiny/infer", json=infer_body(x))
    assert gone.status_code == 503 and "not loaded" in gone.json()["error"]


def test_metrics_expose_the_design_histograms(tiny_repository: Path, live_server) -> None:
    server = live_server(tiny_repository)
    httpx.post(f"{server.url}/v2/models/tiny/infer", json=infer_body(np.ones((2, 16), dtype=np.float32)))
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("inference_request_duration_seconds_bucket", "inference_queue_wait_seconds_bucket",
                 "inference_compute_seconds_bucket", "inference_batch_size_bucket", "inference_requests_total",
                 "inference_queue_depth", "model_load_duration_seconds_bucket", "model_ready",
                 "http_requests_in_flight"):
        assert name in text, name
    assert metric_value(text, "model_ready", {"model": "tiny", "version": "1"}) == 1
    assert metric_value(text, "inference_request_duration_seconds_count",
                        {"endpoint": "/v2/models/{model}/infer", "model": "tiny", "version": "1",
                         "code": "200", "method": "POST"}) == 1
