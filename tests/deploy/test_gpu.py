"""GPU panels against a real GPU: service/metrics.py's NVML collector is served over HTTP (the same
registry code the service's /metrics uses), scraped by the real Prometheus with the project's config,
and every query of the GPU dashboard and its $device variable must return finite, plausible data.
Skipped without a GPU (NVML finds no device)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import start_http_server

from service.metrics import Metrics
from tests.fixtures.deploy_prometheus import Prometheus, finite, free_port
from tests.fixtures.deploy_support import metric_names, panel_queries, prometheus_binary, substitute, variable_queries

pytestmark = [pytest.mark.prometheus, pytest.mark.gpu]


def _busy_gpu(stop: threading.Event) -> None:
    """Keep the GPU busy so that utilisation reads above zero (matrix products, when torch has CUDA)."""
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available():
        return
    a = torch.randn(4096, 4096, device="cuda")
    while not stop.is_set():
        a = (a @ a).tanh_()
        torch.cuda.synchronize()


@pytest.fixture
def gpu_exporter() -> Iterator[int]:
    metrics = Metrics()
    if not metrics.gpu.available:
        pytest.skip("no GPU: NVML (nvidia-ml-py) finds no device, so no gpu_* metrics are exported")
    port = free_port()
    started = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    yield port
    if isinstance(started, tuple):  # prometheus_client >= 0.17 returns (server, thread)
        started[0].shutdown()


def test_gpu_panels_return_data(gpu_exporter: int, tmp_path: Path) -> None:
    prometheus = Prometheus(prometheus_binary(), tmp_path, gpu_exporter)
    stop = threading.Event()
    load = threading.Thread(target=_busy_gpu, args=(stop,), daemon=True)
    try:
        prometheus.wait_scraped()
        load.start()
        time.sleep(3)
        prometheus.wait_scrape_after(time.time())
        gpu_queries = [q for q in panel_queries() if any(m.startswith("gpu_") for m in metric_names(q.expr))]
        assert {q.dashboard for q in gpu_queries} == {"serving-gpu.json"}
        failures = []
        for query in gpu_queries:
            result = prometheus.query(substitute(query.expr))
            print(f"{query.panel} / {query.ref}: {[(s['metric'], s['value'][1]) for s in result]}")
            if not (result and finite(result)):
                failures.append(f"{query.panel} / {query.ref}: no finite data for {query.expr}: {result}")
        assert not failures, "\n".join(failures)
        for board, name, query in variable_queries():
            if name == "device":
                metric = query.removeprefix("label_values(").rsplit(",", 1)[0]
                devices = prometheus.get("/api/v1/label/device/values", **{"match[]": substitute(metric)})
                assert devices and all(d.isdigit() for d in devices), (board, devices)
        total = float(prometheus.query("max(gpu_memory_total_bytes)")[0]["value"][1])
        used = float(prometheus.query("max(gpu_memory_used_bytes)")[0]["value"][1])
        utilisation = float(prometheus.query("max(max_over_time(gpu_utilization_ratio[10s]))")[0]["value"][1])
        assert total > 1e9 and 0 < used <= total
        assert 0 <= utilisation <= 1
        print(f"GPU memory {used / 2**30:.1f} / {total / 2**30:.1f} GiB, max utilisation {utilisation:.2f}")
    finally:
        stop.set()
        if load.is_alive():
            load.join(timeout=10)
        prometheus.stop()
