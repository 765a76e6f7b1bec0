"""Model runtimes: one class per artifact format, chosen by the manifest, the device and `SERVICE_RUNTIME`."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from families.manifest import GraphSpec
from service.runtimes.base import Runtime, resolve_device

__all__ = ["Runtime", "RuntimeChoice", "choose_format", "open_runtime", "ort_has_cuda", "resolve_device"]

# `SERVICE_RUNTIME`: which runtime serves an ONNX graph that has a TorchScript twin (GraphSpec.torchscript).
RuntimeChoice = Literal["auto", "onnx", "torch"]


@functools.cache
def ort_has_cuda() -> bool:
    """Whether the installed onnxruntime has the CUDA execution provider (onnxruntime-gpu)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def choose_format(graph: GraphSpec, device: str, runtime: RuntimeChoice = "auto") -> Literal["onnx", "torchscript"]:
    """The runtime that serves `graph` on `device`.

    A TorchScript version is always TorchScript. An ONNX graph: `onnx` -> ONNX Runtime; `torch` -> its
    TorchScript twin (an error when it has none); `auto` -> the twin on CUDA when ONNX Runtime has no CUDA
    execution provider there (the CPU-only onnxruntime of a machine that has torch with CUDA), ONNX Runtime
    otherwise, so CPU serving is unchanged."""
    if graph.format == "torchscript":
        return "torchscript"
    if runtime == "onnx":
        return "onnx"
    has_twin = graph.torchscript is not None and graph.torchscript.parity.passed
    if runtime == "torch":
        if not has_twin:
            raise RuntimeError(f"SERVICE_RUNTIME=torch but graph {graph.file} has no TorchScript twin "
                               "(exported before twins existed, or torch.jit could not capture it: see the "
                               "manifest's provenance.torchscript_missing); re-export it or use onnx")
        return "torchscript"
    if runtime != "auto":
        raise ValueError(f"runtime must be 'auto', 'onnx' or 'torch', got {runtime!r}")
    if device.startswith("cuda") and has_twin and not ort_has_cuda():
        return "torchscript"
    return "onnx"


def open_runtime(version_dir: Path, graph: GraphSpec, device: str, cpu_threads: int = 0,
                 tensorrt: bool = False, runtime: RuntimeChoice = "auto") -> Runtime:
    """Open one graph of a model version on `device` ("cpu" or "cuda[:N]") with the runtime `choose_format`
    picks for `runtime` (`SERVICE_RUNTIME`)."""
    fmt = choose_format(graph, device, runtime)
    if fmt == "onnx":
        from service.runtimes.onnx import OnnxRuntime

        return OnnxRuntime(version_dir / graph.file, graph, device, cpu_threads, tensorrt)
    if fmt == "torchscript":
        from service.runtimes.torchscript import TorchScriptRuntime

        file = graph.file if graph.format == "torchscript" else graph.torchscript.file  # type: ignore[union-attr]
        return TorchScriptRuntime(version_dir / file, graph, device)  # threads: apply_process_settings
    raise ValueError(f"unsupported runtime format {graph.format!r}")
