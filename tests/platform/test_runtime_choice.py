"""TorchScript twins of ONNX graphs and `SERVICE_RUNTIME`: export writes and parity-checks a twin beside each
ONNX graph; the runtime is chosen per graph and device (auto = torch on CUDA when onnxruntime has no CUDA
provider, ONNX Runtime otherwise), so CPU serving is what it was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from export.core import _device_follows_input
from families.manifest import Manifest
from service.runtimes import choose_format, open_runtime, ort_has_cuda

ROOT = Path(__file__).resolve().parents[2]


def test_export_writes_a_checked_twin_beside_each_onnx_graph(tiny_repository: Path) -> None:
    version_dir = tiny_repository / "tiny" / "1"
    manifest = Manifest.read(version_dir)
    graph = manifest.primary
    twin = graph.torchscript
    assert graph.format == "onnx" and twin is not None
    assert twin.parity.passed and twin.parity.batch_sizes == [2, 5] and twin.torch_version == torch.__version__
    assert manifest.files[twin.file]  # checksummed like every file of the version
    x = np.random.default_rng(2).standard_normal((9, 16)).astype(np.float32)
    onnx_out = open_runtime(version_dir, graph, "cpu", runtime="onnx").run({"x": x})
    torch_runtime = open_runtime(version_dir, graph, "cpu", runtime="torch")
    assert torch_runtime.name == "torchscript:cpu"
    torch_out = torch_runtime.run({"x": x})
    for name in ("y", "norm"):
        np.testing.assert_allclose(torch_out[name], onnx_out[name], rtol=1e-4, atol=1e-5)
    # A TorchScript version has no twin: it is its own torch graph.
    assert Manifest.read(tiny_repository / "tiny_ts" / "1").primary.torchscript is None


def test_no_torchscript_writes_the_onnx_graph_alone(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "export", "tiny", "--checkpoint", str(tiny_checkpoint),
                             "--repository", str(tmp_path), "--no-torchscript"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    version_dir = tmp_path / "tiny" / "1"
    assert sorted(p.name for p in version_dir.iterdir()) == ["manifest.json", "model.onnx"]
    # Without a twin the key is left out, not null: manifests (and /v2 metadata) of such versions are unchanged.
    assert "torchscript" not in (version_dir / "manifest.json").read_text()
    graph = Manifest.read(version_dir).primary
    assert choose_format(graph, "cuda", "auto") == "onnx"  # nothing else to choose (ORT's error tells why)
    with pytest.raises(RuntimeError, match="no TorchScript twin"):
        choose_format(graph, "cpu", "torch")


def test_auto_picks_torch_only_on_cuda_without_an_ort_cuda_provider(tiny_repository: Path) -> None:
    graph = Manifest.read(tiny_repository / "tiny" / "1").primary
    assert choose_format(graph, "cpu", "auto") == "onnx"
    assert choose_format(graph, "cpu", "onnx") == "onnx"
    assert choose_format(graph, "cuda", "onnx") == "onnx"
    assert choose_format(graph, "cuda:1", "torch") == "torchscript"
    assert choose_format(graph, "cuda", "auto") == ("onnx" if ort_has_cuda() else "torchscript")
    ts_graph = Manifest.read(tiny_repository / "tiny_ts" / "1").primary
    assert choose_format(ts_graph, "cpu", "onnx") == "torchscript"
    with pytest.raises(ValueError, match="runtime must be"):
        choose_format(graph, "cuda", "tensorrt")  # type: ignore[arg-type]


def test_the_service_serves_the_twin_when_told(tiny_repository: Path, asgi_service) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16], "data": [0.25] * 32}]}
    answers = {}
    for runtime in ("auto", "torch"):
        service = asgi_service(tiny_repository, models="tiny", runtime=runtime)
        loaded = service.app.state.hub.get("tiny")
        assert loaded.runtimes["model"].name == ("onnxruntime:CPUExecutionProvider" if runtime == "auto"
                                                 else "torchscript:cpu")
        response = service.post("/v2/models/tiny/infer", json=body)
        assert response.status_code == 200, response.text
        answers[runtime] = response.json()["outputs"]
    for onnx_out, torch_out in zip(answers["auto"], answers["torch"], strict=True):
        np.testing.assert_allclose(torch_out["data"], onnx_out["data"], rtol=1e-4, atol=1e-5)


class MakesTensors(torch.nn.Module):
    """Creates tensors inside forward: tracing records the export machine's device for them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(x.shape[1], device=x.device, dtype=x.dtype)
        return x + offsets + torch.zeros(x.shape[0], 1, device=x.device)


def test_traced_device_constants_follow_the_input() -> None:
    x = torch.ones(2, 4)
    traced = torch.jit.freeze(torch.jit.trace(MakesTensors().eval(), (x,)).eval())
    assert 'torch.device("cpu")' in traced.code  # what a CUDA run of the plain trace would trip on
    assert _device_follows_input(traced) >= 1  # the constant is shared by both creations
    assert "torch.device(" not in traced.code and "prim.device(x)" in traced.code
    np.testing.assert_array_equal(traced(torch.ones(3, 5)).numpy(), MakesTensors()(torch.ones(3, 5)).numpy())
