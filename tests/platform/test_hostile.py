"""Hostile and careless clients of the HTTP layer and the Open Inference Protocol on a live process (issue 11:
items 5, 6 (loop-lag metric), 8, 10, 13 and 16).

Each case runs through `hostile_request`: its status, a time bound, the event-loop-lag bound (health
pings every 10 ms on a connection opened before the case) and a peak-RSS-growth bound. One module-scoped
server on the tiny repository, default settings but a short header timeout and a global connection limit
small enough to reach with a few hundred sockets. Raw-socket cases build their `httpx.Response` from the
bytes the server wrote, so they go through the same assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from fastapi import FastAPI, Request

from benchmarks.harness import LiveServer, metric_value
from service.app import create_app, install_error_handlers
from service.settings import Settings
from tests.fixtures.hostile import hostile_request

HEADER_TIMEOUT_S = 4.0
MAX_CONNECTIONS = 400
PER_CLIENT = 256  # the default of SERVICE_MAX_CONNECTIONS_PER_CLIENT
MAX_HEADER_BYTES = 64 * 1024  # the default of SERVICE_MAX_HEADER_BYTES
OTHER_CLIENT = "127.0.0.2"  # another source address on the loopback interface
REPORT: list[tuple[str, int, float, float, float]] = []


@pytest.fixture(scope="module")
def server(serve, tiny_repository: Path) -> LiveServer:
    return serve(tiny_repository, env={"SERVICE_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
                                       "SERVICE_MAX_CONNECTIONS": str(MAX_CONNECTIONS)})


def infer_body(rows: int = 1, **extra: object) -> dict:
    x = np.linspace(-1, 1, rows * 16, dtype=np.float32).reshape(rows, 16)
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 16], "data": x.ravel().tolist()}], **extra}


def client_from(server: LiveServer, address: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30, transport=httpx.HTTPTransport(local_address=address))


# ---- raw sockets -----------------------------------------------------------------------------------------
def connect(server: LiveServer, source: str = "127.0.0.1", send: bytes = b"") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(30)
    sock.connect(("127.0.0.1", server.port))
    if send:
        sock.sendall(send)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def as_response(raw: bytes) -> httpx.Response:
    """The status, headers and body of a raw HTTP/1.1 answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines if ":" in line]
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=body)


def open_idle(server: LiveServer, count: int, source: str) -> list[socket.socket]:
    """Half-open connections: half send nothing, half send a request line and a header, never finishing."""
    partial = b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: hostile\r\n"
    return [connect(server, source, partial if i % 2 else b"") for i in range(count)]


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def wait_answering(server: LiveServer, source: str = "127.0.0.1", timeout: float = 10.0) -> None:
    """Until a fresh connection from `source` is served again (the server has seen the closes)."""
    deadline = time.monotonic() + timeout
    while True:
        with client_from(server, source) as client:
            if client.get("/v2/models/tiny").status_code == 200:
                return
        assert time.monotonic() < deadline, "server did not recover after the idle connections closed"
        time.sleep(0.1)


# ---- item 5: the HTTP layer ------------------------------------------------------------------------------
def test_a_1_mib_header_is_431_at_once(server: LiveServer) -> None:
    big = {"x-padding": "a" * 2**20}
    response = hostile_request(server, lambda c: c.get("/v2/health/live", headers=big), max_seconds=2.0,
                               report=REPORT, name="1 MiB header (/v2)")
    assert response.status_code == 431
    assert f"{MAX_HEADER_BYTES} bytes" in response.json()["error"]
    task = hostile_request(server, lambda c: c.post("/traffic/forecast", headers=big), max_seconds=2.0,
                           report=REPORT, name="1 MiB header (task route)")
    assert task.status_code == 431 and task.json()["error"]["code"] == "headers_too_large"
    # Headers just under the limit are served.
    near = {"x-padding": "a" * (MAX_HEADER_BYTES - 1024)}
    assert hostile_request(server, lambda c: c.get("/v2/health/live", headers=near),
                           report=REPORT, name="63 KiB header").status_code == 200


def test_malformed_request_gets_the_json_400_and_no_server_header(server: LiveServer) -> None:
    def send(_: httpx.Client) -> httpx.Response:
        with connect(server, send=b"GET /v2/health/live HTTP/1.1\r\nBad Header\r\n\r\n") as sock:
            return as_response(read_until_closed(sock))

    response = hostile_request(server, send, max_seconds=3.0, report=REPORT, name="malformed request line")
    assert response.status_code == 400 and response.headers["content-type"] == "application/json"
    assert "error" in response.json()
    assert "server" not in httpx.get(f"{server.url}/v2/health/live").headers


def test_idle_half_open_connections_of_one_client_leave_health_and_others_answering(server: LiveServer) -> None:
    flood = 300
    idle: list[socket.socket] = []
    seen: dict[str, httpx.Response] = {}

    def send(client: httpx.Client) -> httpx.Response:
        assert client.get("/v2/health/live").status_code == 200  # this connection predates the flood
        idle.extend(open_idle(server, flood, "127.0.0.1"))
        with connect(server, send=b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n") as extra:
            seen["refused"] = as_response(read_until_closed(extra))
        seen["kept"] = client.get("/v2/health/ready")
        with client_from(server, OTHER_CLIENT) as other:
            seen["health"] = other.get("/v2/health/ready")
            return other.post("/v2/models/tiny/infer", json=infer_body(4))

    try:
        response = hostile_request(server, send, max_seconds=3.0, report=REPORT,
                                   name=f"{flood} idle connections from one client, another infers")
    finally:
        close_all(idle)
    assert response.status_code == 200 and response.json()["outputs"][0]["shape"][0] == 4
    assert seen["health"].status_code == 200 and seen["kept"].status_code == 200
    refused = seen["refused"]
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    # Refused before any request was read: the path is unknown, so the task-endpoint shape.
    assert f"more than {PER_CLIENT} open connections" in refused.json()["error"]["message"]
    wait_answering(server)


def test_at_the_global_connection_limit_health_and_metrics_still_answer(server: LiveServer) -> None:
    idle: list[socket.socket] = []
    seen: dict[str, httpx.Response] = {}

    def send(_: httpx.Client) -> httpx.Response:
        for source in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):  # 450 in all, each client under its own limit
            idle.extend(open_idle(server, 150, source))
        with client_from(server, OTHER_CLIENT) as other:
            seen["infer"] = other.post("/v2/models/tiny/infer", json=infer_body())
        with client_from(server, OTHER_CLIENT) as other:
            seen["metrics"] = other.get("/metrics")
        with client_from(server, OTHER_CLIENT) as other:
            return other.get("/v2/health/ready")

    try:
        response = hostile_request(server, send, max_seconds=3.0, report=REPORT,
                                   name=f"450 idle connections from 3 clients (limit {MAX_CONNECTIONS})")
    finally:
        close_all(idle)
    assert response.status_code == 200 and response.json() == {"ready": True}
    assert seen["metrics"].status_code == 200
    busy = seen["infer"]
    assert busy.status_code == 503 and "connection limit" in busy.json()["error"]
    assert busy.headers["retry-after"] == "1"
    wait_answering(server, OTHER_CLIENT)


def test_header_timeout_closes_idle_and_slow_connections(server: LiveServer) -> None:
    timings: dict[str, float] = {}

    def send(_: httpx.Client) -> httpx.Response:
        started = time.perf_counter()
        silent = connect(server)
        slow = connect(server, send=b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        with silent, slow:
            raw = read_until_closed(slow)
            timings["slow"] = time.perf_counter() - started
            assert read_until_closed(silent) == b""
            timings["silent"] = time.perf_counter() - started
        return as_response(raw)

    response = hostile_request(server, send, max_seconds=HEADER_TIMEOUT_S + 3, report=REPORT,
                               name=f"header timeout ({HEADER_TIMEOUT_S:g} s)")
    assert response.status_code == 408 and "SERVICE_HEADER_TIMEOUT_S" in response.json()["error"]
    for name, seconds in timings.items():
        assert HEADER_TIMEOUT_S - 0.5 <= seconds <= HEADER_TIMEOUT_S + 2.5, (name, seconds)


# ---- item 8: nested JSON ------------------------------------------------------------------------------
def local_port(response: httpx.Response) -> int:
    return response.extensions["network_stream"].get_extra_info("socket").getsockname()[1]


@pytest.mark.parametrize("prefix", [b"", b"NaN, "], ids=["nested", "NaN-first"])
def test_deeply_nested_json_is_400_and_the_connection_keeps_serving(server: LiveServer, prefix: bytes) -> None:
    """Issue 26 item 9: one strict parser for every JSON body; a NaN literal is refused as not JSON before the
    nesting is even reached (there is no stdlib fallback left to recurse)."""
    depth = 100_000
    body = (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [' + prefix
            + b"[" * depth + b"]" * depth + b"]}]}")
    ports: list[int] = []

    def send(client: httpx.Client, content: bytes) -> httpx.Response:
        response = client.post("/v2/models/tiny/infer", content=content, headers={"content-type": "application/json"})
        ports.append(local_port(response))
        return response

    with httpx.Client(base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=1)) as client:
        response = hostile_request(server, lambda _: send(client, body), max_seconds=2.0, report=REPORT,
                                   name=f"JSON nested {depth} deep ({'NaN first' if prefix else 'orjson'})")
        needle = "NaN and Infinity are not JSON" if prefix else "nested too deeply"
        assert response.status_code == 400 and needle in response.json()["error"], response.text
        again = send(client, json.dumps(infer_body()).encode())
    assert again.status_code == 200 and ports[0] == ports[1]  # same keep-alive connection


def test_recursion_error_anywhere_is_a_400() -> None:
    """The app-wide safety net, for a handler that parses JSON with the stdlib itself."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/echo")
    async def echo(request: Request) -> object:
        return json.loads(await request.body())

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
            return await client.post("/echo", content=b"[" * 100_000 + b"]" * 100_000)

    response = asyncio.run(call())
    assert response.status_code == 400 and "nested too deeply" in response.json()["error"]["message"]


# ---- items 13 and 10: OIP parameters, data, media types, versions ---------------------------------------
def _with_input(**changes: object) -> dict:
    body = infer_body()
    body["inputs"][0].update(changes)
    return body


OIP_CASES: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
    ("timeout NaN", "/v2/models/tiny/infer",
     json.dumps(infer_body(parameters={"timeout": float("nan")})).encode(), {}, 400, "NaN and Infinity are not JSON"),
    ("timeout Infinity", "/v2/models/tiny/infer",
     json.dumps(infer_body(parameters={"timeout": float("inf")})).encode(), {}, 400, "NaN and Infinity are not JSON"),
    ("timeout negative", "/v2/models/tiny/infer",
     json.dumps(infer_body(parameters={"timeout": -5})).encode(), {}, 400, "parameters.timeout"),
    ("timeout string", "/v2/models/tiny/infer",
     json.dumps(infer_body(parameters={"timeout": "soon"})).encode(), {}, 400, "parameters.timeout"),
    ("FP32 strings", "/v2/models/tiny/infer",
     json.dumps(_with_input(data=["1.5"] * 16)).encode(), {}, 400, "got strings"),
    ("FP32 nulls", "/v2/models/tiny/infer",
     json.dumps(_with_input(data=[None] * 16)).encode(), {}, 400, "null"),
    ("FP32 booleans", "/v2/models/tiny/infer",
     json.dumps(_with_input(data=[True] * 16)).encode(), {}, 400, "booleans"),
    ("INT64 fractions", "/v2/models/tiny/infer",
     json.dumps(_with_input(datatype="INT64", data=[1.5] * 16)).encode(), {}, 400, "non-integer"),
    ("binary_data_output string", "/v2/models/tiny/infer",
     json.dumps(infer_body(parameters={"binary_data_output": "yes"})).encode(), {}, 400, "binary_data_output"),
    ("binary_data number", "/v2/models/tiny/infer",
     json.dumps(infer_body(outputs=[{"name": "y", "parameters": {"binary_data": 1}}])).encode(), {}, 400,
     "binary_data must be true or false"),
    ("text/plain body", "/v2/models/tiny/infer", json.dumps(infer_body()).encode(),
     {"content-type": "text/plain"}, 415, "text/plain"),
    ("version ² (infer)", "/v2/models/tiny/versions/%C2%B2/infer", json.dumps(infer_body()).encode(), {}, 400,
     "ASCII digits"),
    ("version of 5000 digits", "/v2/models/tiny/versions/" + "9" * 5000 + "/infer",
     json.dumps(infer_body()).encode(), {}, 400, "positive integer"),
]


@pytest.mark.parametrize(("name", "path", "body", "headers", "status", "needle"), OIP_CASES,
                         ids=[case[0] for case in OIP_CASES])
def test_oip_bad_input_gets_a_4xx_naming_it(server: LiveServer, name: str, path: str, body: bytes,
                                           headers: dict[str, str], status: int, needle: str) -> None:
    headers = {"content-type": "application/json", **headers}
    response = hostile_request(server, lambda c: c.post(path, content=body, headers=headers),
                               max_seconds=2.0, report=REPORT, name=f"OIP {name}")
    assert response.status_code == status, response.text
    assert needle in response.json()["error"], response.text


def test_unicode_digit_version_metadata_is_400_and_valid_requests_still_work(server: LiveServer) -> None:
    response = hostile_request(server, lambda c: c.get("/v2/models/tiny/versions/%C2%B2"), report=REPORT,
                               name="GET version ²")
    assert response.status_code == 400 and "ASCII digits" in response.json()["error"]
    assert httpx.get(f"{server.url}/v2/models/tiny/versions/1").status_code == 200
    # Without a Content-Type (as tritonclient sends it) and with the binary extension's octet-stream.
    plain = httpx.post(f"{server.url}/v2/models/tiny/infer", content=json.dumps(infer_body()).encode())
    assert plain.status_code == 200
    x = np.ones((2, 16), dtype=np.float32)
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16],
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    binary = httpx.post(f"{server.url}/v2/models/tiny/infer", content=header + x.tobytes(),
                        headers={"content-type": "application/octet-stream",
                                 "inference-header-content-length": str(len(header))})
    assert binary.status_code == 200, binary.text


# ---- item 16: the repository index ------------------------------------------------------------------------
def test_tritonclient_repository_index_on_a_default_start(server: LiveServer) -> None:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert "model_repository" in client.get_server_metadata()["extensions"]
    index = client.get_model_repository_index()
    assert {(row["name"], row["version"], row["state"]) for row in index} >= {("tiny", "1", "READY")}
    ready_only = httpx.post(f"{server.url}/v2/repository/index", json={"ready": True})
    assert ready_only.status_code == 200 and all(row["state"] == "READY" for row in ready_only.json())
    # Load and unload stay disabled without a configured admin token.
    assert httpx.post(f"{server.url}/v2/repository/models/tiny/unload").status_code == 404


def asgi_call(settings: Settings, path: str, **kwargs: object) -> httpx.Response:
    """One request to a fresh app without its lifespan: enough for checks that run before any model is used."""
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            return await client.post(path, **kwargs)

    return asyncio.run(call())


def test_restricted_index_needs_the_token_and_load_refuses_unicode_versions(tmp_path: Path) -> None:
    base = {"model_repository": tmp_path, "state_dir": tmp_path / "state"}
    restricted = Settings(**base, admin_token="t0ken", restrict_repository_index=True)
    assert asgi_call(restricted, "/v2/repository/index").status_code == 401
    assert asgi_call(Settings(**base, restrict_repository_index=True), "/v2/repository/index").status_code == 404
    auth = {"Authorization": "Bearer t0ken"}
    assert asgi_call(restricted, "/v2/repository/models/tiny/load").status_code == 401
    load = asgi_call(restricted, "/v2/repository/models/tiny/load", headers=auth,
                     json={"parameters": {"version": "²"}})
    assert load.status_code == 400 and "ASCII digits" in load.json()["error"]


# ---- item 6: the event-loop-lag histogram ----------------------------------------------------------------
def test_event_loop_lag_histogram_is_exported(server: LiveServer) -> None:
    def sample() -> tuple[float, float]:
        text = httpx.get(f"{server.url}/metrics").text
        return (metric_value(text, "event_loop_lag_seconds_count", {}),
                metric_value(text, "event_loop_lag_seconds_bucket", {"le": "0.05"}))

    count, within = sample()
    time.sleep(0.5)
    later_count, later_within = sample()
    assert later_count >= count + 5  # one observation per 50 ms
    assert later_within - within == later_count - count  # an idle loop wakes on time
