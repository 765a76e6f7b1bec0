"""Open Inference Protocol v2 tensors: JSON `data` and the binary tensor data extension.

Binary framing (Triton's extension): the body is a JSON header of `Inference-Header-Content-Length` bytes
followed by the raw little-endian, row-major bytes of each tensor whose `parameters.binary_data_size` is set,
in the order the tensors appear in the header.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from service.errors import BadRequest, InvalidInput
from service.manifest import NUMPY_TO_OIP, OIP_TO_NUMPY

HEADER_LENGTH = "inference-header-content-length"


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """Return (JSON header, binary tail)."""
    if header_length is None:
        json_part, tail = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError as exc:
            raise BadRequest(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from exc
        if not 0 <= length <= len(body):
            raise BadRequest(f"Inference-Header-Content-Length {length} is outside the body ({len(body)} bytes)")
        json_part, tail = body[:length], body[length:]
    try:
        header = json.loads(json_part)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise InvalidInput("inference request must be a JSON object")
    return header, tail


def _shape(raw: Any, name: str) -> list[int]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw):
        raise InvalidInput(f"input {name!r}: 'shape' must be a list of non-negative integers, got {raw!r}")
    return raw


def decode_inputs(header: dict[str, Any], tail: bytes) -> dict[str, np.ndarray]:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("inference request needs a non-empty 'inputs' list")
    offset = 0
    arrays: dict[str, np.ndarray] = {}
    for entry in inputs:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InvalidInput("every input needs a 'name'")
        name = entry["name"]
        if name in arrays:
            raise InvalidInput(f"input {name!r} is given twice")
        datatype = entry.get("datatype")
        if datatype not in OIP_TO_NUMPY:
            raise InvalidInput(f"input {name!r}: unsupported datatype {datatype!r}; "
                               f"expected one of {sorted(OIP_TO_NUMPY)}")
        dtype = OIP_TO_NUMPY[datatype]
        shape = _shape(entry.get("shape"), name)
        count = math.prod(shape)
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput(f"input {name!r}: 'parameters' must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0:
                raise InvalidInput(f"input {name!r}: binary_data_size must be a non-negative integer")
            if size != count * dtype.itemsize:
                raise InvalidInput(f"input {name!r}: binary_data_size {size} does not match shape {shape} of "
                                   f"{datatype} ({count * dtype.itemsize} bytes)")
            if offset + size > len(tail):
                raise BadRequest(f"input {name!r}: binary data truncated (need {size} bytes at offset {offset}, "
                                 f"body has {len(tail) - offset})")
            array = np.frombuffer(tail, dtype=dtype.newbyteorder("<"), count=count, offset=offset).reshape(shape)
            arrays[name] = array.astype(dtype, copy=False)
            offset += size
            continue
        if "data" not in entry:
            raise InvalidInput(f"input {name!r} has neither 'data' nor binary_data_size")
        try:
            array = np.asarray(entry["data"], dtype=dtype)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidInput(f"input {name!r}: data is not a list of {datatype} values ({exc})") from exc
        if array.size != count:
            raise InvalidInput(f"input {name!r}: {array.size} values given, shape {shape} needs {count}")
        arrays[name] = array.reshape(shape)
    if offset != len(tail):
        raise BadRequest(f"{len(tail) - offset} bytes of binary data are not claimed by any input")
    return arrays


def requested_outputs(header: dict[str, Any], available: list[str]) -> list[tuple[str, bool]]:
    """[(output name, binary?)] in the order requested (all outputs when none are named)."""
    params = header.get("parameters") or {}
    binary_default = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    outputs = header.get("outputs")
    if outputs is None:
        return [(name, binary_default) for name in available]
    if not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list")
    chosen = []
    for entry in outputs:
        if not isinstance(entry, dict) or entry.get("name") not in available:
            raise InvalidInput(f"unknown output {entry!r}; available: {available}")
        out_params = entry.get("parameters") or {}
        binary = bool(out_params.get("binary_data", binary_default)) if isinstance(out_params, dict) else binary_default
        chosen.append((entry["name"], binary))
    return chosen


def encode_response(header: dict[str, Any], outputs: dict[str, np.ndarray],
                    chosen: list[tuple[str, bool]]) -> tuple[bytes, int | None]:
    """Return (body, JSON header length or None when no tensor is binary)."""
    blobs: list[bytes] = []
    entries = []
    for name, binary in chosen:
        array = np.ascontiguousarray(outputs[name])
        datatype = NUMPY_TO_OIP[array.dtype]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    header = {**header, "outputs": entries}
    json_bytes = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return json_bytes, None
    return json_bytes + b"".join(blobs), len(json_bytes)
