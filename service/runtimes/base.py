from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from service.manifest import GraphSpec


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return torch.cuda.is_available()


def resolve_device(setting: str) -> str:
    """`auto` -> `cuda` when a GPU is visible, else `cpu`; explicit values are checked."""
    setting = setting.strip().lower()
    if setting == "auto":
        return "cuda" if cuda_available() else "cpu"
    if setting.startswith("cuda"):
        if not cuda_available():
            raise RuntimeError(f"device {setting!r} requested but no CUDA GPU is visible")
        return setting
    if setting == "cpu":
        return "cpu"
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {setting!r}")


def device_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


class Runtime(ABC):
    """Runs one graph. Inputs and outputs are numpy arrays keyed by the manifest's tensor names."""

    def __init__(self, graph: GraphSpec, device: str) -> None:
        self.graph = graph
        self.device = device

    @property
    @abstractmethod
    def name(self) -> str:
        """Runtime name reported in metadata (e.g. onnxruntime:CUDAExecutionProvider)."""

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph once. Thread-compatible: the service calls it from one worker thread."""

    def sample_inputs(self, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Deterministic inputs of the manifest's sample shapes, for warm-up."""
        rng = np.random.default_rng(0)
        samples = {}
        for spec in self.graph.inputs:
            shape = spec.concrete_sample_shape()
            if batch_size is not None and self.graph.batchable:
                shape[0] = batch_size
            dtype = spec.numpy_dtype
            if dtype.kind == "f":
                samples[spec.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind == "b":
                samples[spec.name] = rng.random(shape) < 0.5
            else:
                samples[spec.name] = np.zeros(shape, dtype=dtype)
        return samples
