from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from families.manifest import GraphSpec
from service.runtimes.base import Runtime, device_index, input_fault

_STATUS_PREFIX = "[ONNXRuntimeError] : "


class OnnxRuntime(Runtime):
    """ONNX Runtime session: CUDA execution provider with IO binding on GPU, CPU provider otherwise."""

    def __init__(self, path: Path, graph: GraphSpec, device: str, cpu_threads: int = 0,
                 tensorrt: bool = False) -> None:
        super().__init__(graph, device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if cpu_threads > 0:
            options.intra_op_num_threads = cpu_threads
        options.inter_op_num_threads = 1
        # No busy-waiting intra-op threads: on a shared CPU they take the cores the event loop and the other
        # instances need (traffic default, batch 1, 2 cores under load: 43 ms spinning, 13 ms without).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._use_cuda = device.startswith("cuda")
        if self._use_cuda:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(
                    "device is CUDA but onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
                )
            # TF32 off: its error exceeds what cross-device entropy coding tolerates (the codec's scale
            # indices must agree between encoder and decoder machines).
            providers: list = [("CUDAExecutionProvider", {"device_id": device_index(device), "use_tf32": 0}),
                               "CPUExecutionProvider"]
            if tensorrt and "TensorrtExecutionProvider" in ort.get_available_providers():
                # Optional: TensorRT takes the subgraphs it supports, CUDA the rest (engines cached on disk).
                providers.insert(0, ("TensorrtExecutionProvider", {
                    "device_id": device_index(device), "trt_engine_cache_enable": True,
                    # Not in the version folder, which may be a read-only mount.
                    "trt_engine_cache_path": str(Path(tempfile.gettempdir()) / "ort_trt_cache")}))
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self._output_names = [o.name for o in graph.outputs]
        self._device_id = device_index(device)

    @property
    def name(self) -> str:
        return f"onnxruntime:{self.session.get_providers()[0]}"

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return self._run(inputs)
        except (ort_errors.InvalidArgument, ort_errors.RuntimeException, ort_errors.Fail) as exc:
            message = str(exc)
            if message.startswith(_STATUS_PREFIX):  # "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : text"
                message = message.split(" : ", 3)[-1]
            fault = input_fault(message, certain=isinstance(exc, ort_errors.InvalidArgument))
            if fault is None:
                raise
            raise fault from exc

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._use_cuda:
            values = self.session.run(self._output_names, inputs)
            return dict(zip(self._output_names, values, strict=True))
        # IO binding: copy each input to the GPU once, let ORT allocate outputs on the GPU, copy back once.
        binding = self.session.io_binding()
        for name, array in inputs.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", self._device_id)
            binding.bind_ortvalue_input(name, value)
        for name in self._output_names:
            binding.bind_output(name, "cuda", self._device_id)
        self.session.run_with_iobinding(binding)
        values = binding.copy_outputs_to_cpu()
        return dict(zip(self._output_names, values, strict=True))
