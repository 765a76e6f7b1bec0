"""OIP tensors over gRPC: `ModelInferRequest` inputs to numpy and numpy outputs to `raw_output_contents`.

The same rules as the REST decoder (service/oip/tensors.py), on the protobuf message instead of JSON:
- `raw_input_contents[i]` is the little-endian, row-major bytes of `inputs[i]`; either every input is raw or
  none is (as in Triton). Each becomes `np.frombuffer` over the bytes protobuf already holds (no copy; the one
  copy is protobuf's, from its arena into the Python `bytes` object).
- Typed `contents` (`fp32_contents`, `int_contents`, ...) per the KServe table; narrower integer types travel in
  the wider field and are range-checked, never wrapped (300 in an INT8 tensor is an error, not 44). FP16 has no
  typed field: raw only.
- Outputs always go out as `raw_output_contents` (what Triton does; `tritonclient.grpc` and KServe's clients
  read either), one `tobytes()` copy each because protobuf's bytes fields take `bytes` only.
"""

from __future__ import annotations

import math

import numpy as np

from families.manifest import NUMPY_TO_OIP, OIP_TO_NUMPY
from service.errors import BadRequest, InvalidInput
from service.grpc.protos import grpc_service_pb2 as pb

# KServe's grpc_predict_v2 table: which `InferTensorContents` field carries each datatype.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
# numpy dtype of each typed field as protobuf stores it (before narrowing to the tensor's datatype).
FIELD_DTYPE = {"bool_contents": np.bool_, "int_contents": np.int32, "int64_contents": np.int64,
               "uint_contents": np.uint32, "uint64_contents": np.uint64, "fp32_contents": np.float32,
               "fp64_contents": np.float64}


def typed_value_count(request: pb.ModelInferRequest) -> int:
    """Values held in typed `contents` fields (0 for raw requests): decides whether decoding leaves the loop."""
    if request.raw_input_contents:
        return 0
    total = 0
    for tensor in request.inputs:
        field = CONTENTS_FIELD.get(tensor.datatype)
        if field is not None:
            total += len(getattr(tensor.contents, field))
    return total


def _shape(tensor: pb.ModelInferRequest.InferInputTensor) -> list[int]:
    shape = list(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {tensor.name!r}: 'shape' must hold non-negative integers, got {shape}")
    return shape


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The request's input tensors by name; InvalidInput / BadRequest (-> INVALID_ARGUMENT) naming the input."""
    if not request.inputs:
        raise InvalidInput("inference request needs at least one input")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
                           "either every input is raw or none is")
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if not name:
            raise InvalidInput("every input needs a 'name'")
        if name in arrays:
            raise InvalidInput(f"input {name!r} is given twice")
        datatype = tensor.datatype
        if datatype not in OIP_TO_NUMPY:
            raise InvalidInput(f"input {name!r}: unsupported datatype {datatype!r}; expected one of "
                               f"{sorted(OIP_TO_NUMPY)}")
        dtype = OIP_TO_NUMPY[datatype]
        shape = _shape(tensor)
        count = math.prod(shape)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input {name!r} has both 'contents' and raw_input_contents")
            blob = raw[index]
            if len(blob) != count * dtype.itemsize:
                raise InvalidInput(f"input {name!r}: raw_input_contents holds {len(blob)} bytes; shape {shape} of "
                                   f"{datatype} needs {count * dtype.itemsize}")
            array = np.frombuffer(blob, dtype=dtype.newbyteorder("<"), count=count).reshape(shape)
            arrays[name] = array.astype(dtype, copy=False)  # a no-op on little-endian hosts
            continue
        field = CONTENTS_FIELD.get(datatype)
        if field is None:
            raise InvalidInput(f"input {name!r}: {datatype} has no typed contents field; send it in "
                               "raw_input_contents")
        values = getattr(tensor.contents, field)
        if len(values) != count:
            raise InvalidInput(f"input {name!r}: {len(values)} values in contents.{field}, shape {shape} needs "
                               f"{count}")
        wide = np.array(values, dtype=FIELD_DTYPE[field])  # upb's repeated fields convert in C (~10 ns a value)
        if dtype.kind in "iu" and wide.dtype != dtype and wide.size:
            info = np.iinfo(dtype)
            low, high = wide.min(), wide.max()
            if low < info.min or high > info.max:
                raise BadRequest(f"input {name!r}: {datatype} data must lie in [{info.min}, {info.max}], "
                                 f"got values in [{low}, {high}]")
        arrays[name] = wide.astype(dtype, copy=False).reshape(shape)
    return arrays


def requested_outputs(request: pb.ModelInferRequest, available: list[str]) -> list[str]:
    """Output names in the order requested (every output when none is named)."""
    if not request.outputs:
        return list(available)
    chosen = []
    for output in request.outputs:
        if output.name not in available:
            raise InvalidInput(f"unknown output {output.name!r}; available: {available}")
        chosen.append(output.name)
    return chosen


def encode_outputs(response: pb.ModelInferResponse, outputs: dict[str, np.ndarray], chosen: list[str]) -> None:
    """Append `chosen` outputs to `response` as metadata + raw_output_contents (little-endian, row-major)."""
    for name in chosen:
        array = np.ascontiguousarray(outputs[name])
        response.outputs.add(name=name, datatype=NUMPY_TO_OIP[array.dtype], shape=array.shape)
        response.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
