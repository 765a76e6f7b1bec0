"""GPU runtime paths: ONNX Runtime's CUDA execution provider with IO binding, TorchScript on CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from families.manifest import Manifest
from service.runtimes import open_runtime, resolve_device

pytestmark = pytest.mark.gpu


def test_auto_device_picks_the_gpu() -> None:
    assert resolve_device("auto") == "cuda"


@pytest.mark.parametrize("model", ["tiny", "tiny_ts"])
def test_gpu_runtime_matches_cpu(tiny_repository: Path, model: str) -> None:
    version_dir = tiny_repository / model / "1"
    graph = Manifest.read(version_dir).primary
    gpu = open_runtime(version_dir, graph, "cuda")
    cpu = open_runtime(version_dir, graph, "cpu")
    if model == "tiny":
        assert gpu.name == "onnxruntime:CUDAExecutionProvider"
    x = np.random.default_rng(0).standard_normal((33, 16)).astype(np.float32)
    want = cpu.run({"x": x})
    for _ in range(3):  # repeated IO-bound runs reuse nothing stale
        got = gpu.run({"x": x})
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(got["norm"], want["norm"], rtol=1e-3, atol=1e-4)


def test_service_serves_on_gpu(tiny_repository: Path, live_server) -> None:
    import httpx

    server = live_server(tiny_repository, env={"SERVICE_DEVICE": "auto"})
    assert "on cuda" in server.log()
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16], "data": [0.5] * 32}]}
    response = httpx.post(f"{server.url}/v2/models/tiny/infer", json=body, timeout=60)
    assert response.status_code == 200
