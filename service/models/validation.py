"""What the service checks of an inference request's tensors before they are queued."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from families.manifest import GraphSpec
from service.errors import InvalidInput

Tensors = dict[str, np.ndarray]

# Inputs above this many bytes get their value check (finiteness, contiguity) on a thread: a 64 MiB float
# tensor takes ~20 ms to scan, far over what the event loop may be blocked for.
INLINE_VALUE_CHECK_BYTES = 256 * 1024
VALUE_CHECKS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="input-check")


def validate_inputs(graph_name: str, spec: GraphSpec, inputs: Tensors) -> None:
    """Check names, dtypes, ranks and fixed dimensions against the graph signature (cheap: no data read)."""
    expected = {t.name: t for t in spec.inputs}
    missing = sorted(set(expected) - set(inputs))
    if missing:
        raise InvalidInput(f"missing input tensor(s) {missing} for {graph_name}; expected {sorted(expected)}")
    unexpected = sorted(set(inputs) - set(expected))
    if unexpected:
        raise InvalidInput(f"unexpected input tensor(s) {unexpected} for {graph_name}; expected {sorted(expected)}")
    rows = None
    for name, tensor in expected.items():
        array = inputs[name]
        if array.dtype != tensor.numpy_dtype:
            raise InvalidInput(f"input {name!r} has datatype {array.dtype}, expected {tensor.datatype}")
        if array.ndim != len(tensor.shape):
            raise InvalidInput(f"input {name!r} has shape {list(array.shape)}, expected rank {len(tensor.shape)} "
                               f"shape {tensor.shape} (-1 = any)")
        for axis, (have, want) in enumerate(zip(array.shape, tensor.shape, strict=True)):
            if want >= 0 and have != want:
                raise InvalidInput(f"input {name!r} has shape {list(array.shape)}, expected {tensor.shape} "
                                   f"(axis {axis} must be {want})")
        if spec.batchable:
            if array.shape[0] == 0:
                raise InvalidInput(f"input {name!r} has an empty batch")
            if rows is not None and array.shape[0] != rows:
                raise InvalidInput(f"inputs disagree on batch size: {name!r} has {array.shape[0]}, others {rows}")
            rows = array.shape[0]


def check_values(inputs: Tensors) -> Tensors:
    """Finite floats only; C-contiguous copies where needed. Reads every value: see INLINE_VALUE_CHECK_BYTES."""
    checked: Tensors = {}
    for name, array in inputs.items():
        # min/max propagate NaN and show +-Inf without a boolean temporary the size of the input.
        if array.dtype.kind == "f" and array.size and not (np.isfinite(array.min()) and np.isfinite(array.max())):
            raise InvalidInput(f"input {name!r} contains NaN or Inf")
        checked[name] = np.ascontiguousarray(array)
    return checked
