"""Model runtimes: one class per artifact format, chosen by the manifest; the device by settings."""

from __future__ import annotations

from pathlib import Path

from families.manifest import GraphSpec
from service.runtimes.base import Runtime, resolve_device

__all__ = ["Runtime", "open_runtime", "resolve_device"]


def open_runtime(version_dir: Path, graph: GraphSpec, device: str, cpu_threads: int = 0,
                 tensorrt: bool = False) -> Runtime:
    """Open one graph of a model version on `device` ("cpu" or "cuda[:N]")."""
    path = version_dir / graph.file
    if graph.format == "onnx":
        from service.runtimes.onnx import OnnxRuntime

        return OnnxRuntime(path, graph, device, cpu_threads, tensorrt)
    if graph.format == "torchscript":
        from service.runtimes.torchscript import TorchScriptRuntime

        return TorchScriptRuntime(path, graph, device)  # threads: apply_process_settings
    raise ValueError(f"unsupported runtime format {graph.format!r}")
