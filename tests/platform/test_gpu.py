"""GPU runtime paths: ONNX Runtime's CUDA execution provider with IO binding (where onnxruntime has it),
TorchScript on CUDA (the ONNX graphs' twins where it has not: SERVICE_RUNTIME=auto), the service on CUDA with
its NVML metrics. benchmarks/gpu_check.sh sets GPU_CHECK_REPOSITORY to the default versions it built on the
device, whose every twin must then run on CUDA as on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness import metric_value
from families.manifest import Manifest
from service.runtimes import open_runtime, ort_has_cuda, resolve_device

pytestmark = pytest.mark.gpu


def test_auto_device_picks_the_gpu() -> None:
    assert resolve_device("auto") == "cuda"


@pytest.mark.parametrize("model", ["tiny", "tiny_ts"])
def test_gpu_runtime_matches_cpu(tiny_repository: Path, model: str) -> None:
    version_dir = tiny_repository / model / "1"
    graph = Manifest.read(version_dir).primary
    gpu = open_runtime(version_dir, graph, "cuda")
    cpu = open_runtime(version_dir, graph, "cpu")
    if model == "tiny":  # auto: ORT's CUDA provider where onnxruntime has one, else the TorchScript twin
        assert gpu.name == ("onnxruntime:CUDAExecutionProvider" if ort_has_cuda() else "torchscript:cuda")
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
    metrics = httpx.get(f"{server.url}/metrics", timeout=30).text  # NVML, read at scrape time
    total = metric_value(metrics, "gpu_memory_total_bytes", {"device": "0"})
    used = metric_value(metrics, "gpu_memory_used_bytes", {"device": "0"})
    assert total > 1e9 and 0 < used <= total, (used, total)


def _built_versions() -> list[Path]:
    root = os.environ.get("GPU_CHECK_REPOSITORY")
    return sorted(p.parent for p in Path(root).glob("*/*/manifest.json")) if root else []


@pytest.mark.skipif(not _built_versions(), reason="GPU_CHECK_REPOSITORY (set by benchmarks/gpu_check.sh) is unset")
@pytest.mark.parametrize("version_dir", _built_versions(), ids=lambda p: f"{p.parent.name}-v{p.name}")
def test_every_twin_runs_on_cuda_as_on_the_cpu(version_dir: Path) -> None:
    from service.runtimes.torchscript import apply_process_settings

    apply_process_settings(0)  # TF32 off, as the service runs
    manifest = Manifest.read(version_dir)
    for name, graph in manifest.graphs.items():
        assert graph.torchscript is not None, f"{name}: {manifest.provenance.get('torchscript_missing')}"
        cuda = open_runtime(version_dir, graph, "cuda", runtime="torch")
        cpu = open_runtime(version_dir, graph, "cpu", runtime="onnx")
        inputs = cpu.sample_inputs()
        want, got = cpu.run(inputs), cuda.run(inputs)
        parity = graph.torchscript.parity
        for out in graph.outputs:  # CUDA kernels differ from the CPU's in the last bits: 10x export's bounds
            np.testing.assert_allclose(got[out.name], want[out.name], rtol=10 * parity.rtol, atol=10 * parity.atol,
                                       err_msg=f"{manifest.name} {name}.{out.name}")
