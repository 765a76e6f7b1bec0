from __future__ import annotations

import re
from abc import ABC, abstractmethod

import numpy as np

from families.manifest import GraphSpec
from service.errors import BadRequest

# A run that passed the signature check can still fail on the input itself: a spatial size too small for a
# kernel, shapes that do not broadcast, an index outside a table. Those are the client's (400); anything
# else (memory, device, a broken graph) stays a server fault.
_INPUT_FAULT = re.compile(
    r"shape|broadcast|dimension|size mismatch|sizes of tensors|must match the size|kernel size|input size"
    r"|out of (data )?bounds|index out of range|indices element|cannot be reshaped", re.IGNORECASE)
_SERVER_FAULT = re.compile(r"out of memory|failed to allocate|cuda|cudnn|cublas|device", re.IGNORECASE)
_SOURCE_PATH = re.compile(r"(?:/[\w.+-]+)+\.(?:h|cc|cpp|cu|py):\d+\s*")


def input_fault(message: str, *, certain: bool = False) -> BadRequest | None:
    """BadRequest carrying the runtime's message when the failure is caused by the input, else None.

    `certain`: the runtime itself says the argument is invalid (ONNX Runtime's INVALID_ARGUMENT)."""
    clean = _SOURCE_PATH.sub("", message).strip()  # runtime source locations say nothing to a client
    if not certain and (_SERVER_FAULT.search(clean) or not _INPUT_FAULT.search(clean)):
        return None
    return BadRequest(f"the model cannot run on this input: {clean}", details={"reason": "runtime_rejected_input"})


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
