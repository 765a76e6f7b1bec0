from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from families.manifest import GraphSpec
from service.runtimes.base import Runtime, input_fault


def apply_process_settings(cpu_threads: int) -> None:
    """Torch's process-wide settings, applied once at start-up (app lifespan), not per loaded model: intra-op
    threads (0 = torch's default) and full-fp32 CUDA matmuls/convs, as on CPU: TF32 error would break
    cross-device entropy decoding."""
    if cpu_threads > 0:
        torch.set_num_threads(cpu_threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


class TorchScriptRuntime(Runtime):
    """`torch.jit.load` on the chosen device. Inputs are passed positionally in manifest order; the module
    returns a tensor, a tuple of tensors or a dict keyed by output name."""

    def __init__(self, path: Path, graph: GraphSpec, device: str) -> None:
        super().__init__(graph, device)
        self.module = torch.jit.load(str(path), map_location=device).eval()
        self._input_names = [i.name for i in graph.inputs]
        self._output_names = [o.name for o in graph.outputs]

    @property
    def name(self) -> str:
        return f"torchscript:{self.device}"

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self.device) for n in self._input_names]
        with torch.inference_mode():
            try:
                result = self.module(*tensors)
            except RuntimeError as exc:
                # The interpreter prefixes a TorchScript traceback (source paths); the cause is the last line.
                lines = [line for line in str(exc).splitlines() if line.strip()]
                cause = lines[-1].removeprefix("RuntimeError: ") if lines else type(exc).__name__
                fault = input_fault(cause)
                if fault is None:
                    raise
                raise fault from exc
        if isinstance(result, torch.Tensor):
            result = (result,)
        if isinstance(result, dict):
            result = tuple(result[n] for n in self._output_names)
        if len(result) != len(self._output_names):
            raise RuntimeError(f"graph returned {len(result)} outputs, manifest declares {len(self._output_names)}")
        return {n: t.detach().cpu().numpy() for n, t in zip(self._output_names, result, strict=True)}
