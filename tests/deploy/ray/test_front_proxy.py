"""deploy/ray/nginx.conf in front of the session cluster's Ray proxy: the limits Ray's proxy cannot enforce
(header size, header timeout, connections per client) hold, the body limit answers 413 before Ray sees the
body, and a client cannot lift Ray's end-to-end timeout. Skipped without Debian's nginx
(scripts/install_nginx.sh, which .ci/run calls).

The shipped config with its ports replaced, and two values lowered so the test is quick: the per-client
connection bound (256 -> 2) and the header timeout (10 s -> 2 s)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.harness import ROOT, free_port
from scripts.ray_smoke import oversized

pytestmark = pytest.mark.ray
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
CONFIG = ROOT / "deploy" / "ray" / "nginx.conf"


@pytest.fixture(scope="module")
def front(ray_service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if NGINX is None:
        pytest.skip("nginx is not installed (scripts/install_nginx.sh)")
    prefix = tmp_path_factory.mktemp("nginx")
    port, ray_port = free_port(), int(ray_service.url.rsplit(":", 1)[1])
    text = CONFIG.read_text()
    temp_paths = f"client_body_temp_path {prefix}/body;\n    proxy_temp_path {prefix}/proxy;"  # not /var/lib
    for old, new in (("listen 8080;", f"listen 127.0.0.1:{port};"),
                     ("server 127.0.0.1:8000;", f"server 127.0.0.1:{ray_port};"),
                     ("limit_conn per_client 256;", "limit_conn per_client 2;"),
                     ("client_header_timeout 10s;", "client_header_timeout 2s;"),
                     ("http {", f"http {{\n    {temp_paths}")):
        assert text.count(old) == 1, old  # the shipped config still says what the test replaces
        text = text.replace(old, new)
    config = prefix / "nginx.conf"
    config.write_text(text)
    log = prefix / "error.log"
    directives = f"pid {prefix}/nginx.pid; error_log {log} info; daemon off;"
    server = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(config), "-g", directives])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/v2/health/live", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, log.read_text() if log.exists() else ""
        time.sleep(0.2)
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _read_to_close(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_requests_pass_and_a_client_cannot_lift_rays_timeout(front: str, ray_service, forecast_body: dict) -> None:
    lifted = {"x-request-timeout-seconds": "0.000001"}  # Ray's proxy: this request's own end-to-end timeout
    direct = httpx.post(f"{ray_service.url}/traffic/forecast", json=forecast_body, headers=lifted, timeout=60)
    assert direct.status_code == 408, direct.text  # Ray honours it when it reaches its proxy
    through = httpx.post(f"{front}/traffic/forecast", json=forecast_body, headers=lifted, timeout=60)
    assert through.status_code == 200 and through.headers["x-replica"].startswith("traffic#"), through.text


def test_oversized_headers_and_bodies_never_reach_ray(front: str) -> None:
    big = httpx.get(f"{front}/v2/health/live", headers={"x-big": "a" * 20_000}, timeout=30)
    assert big.status_code == 400 and "x-replica" not in big.headers, big.text  # a header line over 16 KiB
    many = {f"x-h{i}": "b" * 15_000 for i in range(5)}  # each line fits, together over 4 x 16 KiB
    assert httpx.get(f"{front}/v2/health/live", headers=many, timeout=30).status_code == 400
    fits = {f"x-h{i}": "b" * 10_000 for i in range(3)}
    assert httpx.get(f"{front}/v2/health/live", headers=fits, timeout=30).status_code == 200
    too_large = httpx.post(f"{front}/traffic/forecast", content=b" " * (64 * 1024 * 1024 + 1), timeout=60,
                           headers={"content-type": "application/json"})
    assert too_large.status_code == 413 and "x-replica" not in too_large.headers  # nginx's own 413
    assert oversized(front, 64 * 1024 * 1024, timeout=60)["declared"] == 413  # answered before any body byte


def test_half_sent_headers_are_cut_off(front: str) -> None:
    host, port = front.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-slow: ")  # and nothing more
        answer = _read_to_close(sock)
        waited = time.monotonic() - started
    assert 1.5 < waited < 10 and b"x-replica" not in answer, (waited, answer)  # closed at client_header_timeout


def test_connections_per_client_are_bounded(front: str) -> None:
    host, port = front.removeprefix("http://").split(":")
    held = []
    try:
        for _ in range(2):  # two requests in progress: headers read, a chunked body still open
            sock = socket.create_connection((host, int(port)), timeout=30)
            sock.sendall(b"POST /traffic/forecast HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         b"transfer-encoding: chunked\r\n\r\n1\r\n{\r\n")
            held.append(sock)
        time.sleep(0.5)
        third = httpx.get(f"{front}/v2/health/live", timeout=30)
        assert third.status_code == 503 and "x-replica" not in third.headers, third.text
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while (answer := httpx.get(f"{front}/v2/health/live", timeout=30)).status_code != 200:
        assert time.monotonic() < deadline, answer.status_code
        time.sleep(0.2)
