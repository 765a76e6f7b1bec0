"""The body limit through Ray Serve: the ingress answers 413 from Content-Length before any of the body arrives,
and for a chunked body as soon as it passes the limit (the rest never sent), then closes the connection; bodies
up to the limit, chunked or not, reach the replica unchanged.

A second application ("limits", route_prefix /limits) on the session cluster: one traffic replica whose
settings.max_request_bytes is 64 KiB."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.ray.serve_app import DEFAULT_MAX_BODY, max_body_of
from scripts.ray_smoke import oversized

pytestmark = pytest.mark.ray
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def limited(ray_service, ray_repository: Path, tmp_path_factory: pytest.TempPathFactory, extra_app) -> Iterator[str]:
    repository = tmp_path_factory.mktemp("limits-repo")
    shutil.copytree(ray_repository / "traffic", repository / "traffic")
    state = tmp_path_factory.mktemp("limits-state")
    args = {"repository": str(repository), "replicas": 1, "ingress_replicas": 1, "num_cpus": 0.25,
            "state_dir": str(state), "metrics_dir": None, "graceful_shutdown_timeout_s": 2,
            "settings": {"device": "cpu", "max_request_bytes": LIMIT}}
    with extra_app("limits", args) as url:
        yield url


def test_the_ingress_limit_is_the_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVICE_MAX_REQUEST_BYTES", raising=False)
    assert max_body_of({}) == DEFAULT_MAX_BODY == 64 * 1024 * 1024
    assert max_body_of({"settings": {"max_request_bytes": 1000}}) == 1000
    monkeypatch.setenv("SERVICE_MAX_REQUEST_BYTES", "2000")  # what the replicas would read from the environment
    assert max_body_of({}) == 2000


def test_oversized_bodies_get_413_before_they_are_read(limited: str) -> None:
    # `oversized` never completes either body and reads each answer to the connection's close: a server that
    # waited for the whole body, or kept the connection open after the 413, would fail it (socket timeout).
    assert oversized(limited, LIMIT, timeout=30) == {"declared": 413, "chunked": 413}
    answer = httpx.post(f"{limited}/traffic/forecast", content=b" " * (LIMIT + 1),
                        headers={"content-type": "application/json"}, timeout=30)
    assert answer.status_code == 413, answer.text
    assert answer.json()["error"]["code"] == "payload_too_large" and answer.headers["connection"] == "close"
    assert answer.headers["x-replica"].startswith("Ingress#")  # the ingress answered; no replica saw the body
    oip = httpx.post(f"{limited}/v2/models/traffic/infer", content=b" " * (LIMIT + 1),
                     headers={"content-type": "application/json"}, timeout=30)
    assert oip.status_code == 413 and isinstance(oip.json()["error"], str), oip.text  # the OIP error shape


def test_bodies_up_to_the_limit_reach_the_replica(limited: str, forecast_body: dict) -> None:
    raw = json.dumps(forecast_body).encode()
    padded = raw + b" " * (LIMIT - len(raw))  # exactly the limit: JSON allows trailing whitespace
    assert len(padded) == LIMIT
    with httpx.Client(base_url=limited, timeout=60) as client:
        whole = client.post("/traffic/forecast", content=padded, headers={"content-type": "application/json"})
        assert whole.status_code == 200 and whole.headers["x-replica"].startswith("traffic#"), whole.text

        def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked, 4 KiB at a time
            for start in range(0, len(padded), 4096):
                yield padded[start:start + 4096]

        chunked = client.post("/traffic/forecast", content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 200, chunked.text
        assert chunked.json() == whole.json()
