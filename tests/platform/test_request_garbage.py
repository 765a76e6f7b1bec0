"""A request leaves no cyclic garbage (issue 28, "make it lean"): what it allocates is freed by reference counting
when it ends, so the cyclic GC's young collections (each a pause of the event loop, ~0.5 ms when every request
left a cancelled disconnect-watch task, its traceback and the request's ASGI objects in a cycle) stay rare.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.harness import metric_value


@pytest.fixture(scope="module")
def server(tiny_repository: Path, serve):
    return serve(tiny_repository, env={"SERVICE_CPU_THREADS": "1"})


def young_collections(client: httpx.Client) -> float:
    return metric_value(client.get("/metrics").text, "gc_pause_seconds_count", {"generation": "0"})


@pytest.mark.parametrize("body", ["json", "binary"])
def test_tiny_requests_leave_no_garbage_for_the_cyclic_gc(server, body: str) -> None:
    x = np.ones((1, 16), np.float32)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        if body == "json":
            send = {"json": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16],
                                         "data": x.ravel().tolist()}]}}
        else:
            header = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], ' \
                     b'"parameters": {"binary_data_size": 64}}]}'
            send = {"content": header + x.tobytes(),
                    "headers": {"Inference-Header-Content-Length": str(len(header)),
                                "content-type": "application/octet-stream"}}
        for _ in range(50):  # warm: series created, caches filled
            assert client.post("/v2/models/tiny/infer", **send).status_code == 200
        before = young_collections(client)
        requests = 1500
        for _ in range(requests):
            assert client.post("/v2/models/tiny/infer", **send).status_code == 200
        collections = young_collections(client) - before
    # With ~30 objects of cyclic garbage per request (the cancelled watch task's cycle) this was ~25 collections
    # (threshold0 2000); what is left is the metrics scrapes' and the event loop's own churn.
    assert collections <= 6, f"{collections} young collections over {requests} requests"
