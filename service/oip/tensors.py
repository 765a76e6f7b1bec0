"""Open Inference Protocol v2 tensors: JSON `data` and the binary tensor data extension.

Binary framing (Triton's extension): the body is a JSON header of `Inference-Header-Content-Length` bytes
followed by the raw little-endian, row-major bytes of each tensor whose `parameters.binary_data_size` is set,
in the order the tensors appear in the header.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import numpy as np
import orjson

from families.manifest import NUMPY_TO_OIP, OIP_TO_NUMPY
from service.dataplane.bodies import parse_json
from service.errors import BadRequest, InvalidInput

HEADER_LENGTH = "inference-header-content-length"
# numpy kinds a JSON array may infer to, per target kind: no strings, nulls or objects, no floats into ints.
_ACCEPTED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "fiu"}


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
    header = parse_json(json_part)
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
        if not isinstance(datatype, str) or datatype not in OIP_TO_NUMPY:  # a dict/list is unhashable: no 500
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
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
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
        array = _json_tensor(entry["data"], name, datatype, dtype)
        if array.size != count:
            raise InvalidInput(f"input {name!r}: {array.size} values given, shape {shape} needs {count}")
        arrays[name] = array.reshape(shape)
    if offset != len(tail):
        raise BadRequest(f"{len(tail) - offset} bytes of binary data are not claimed by any input")
    return arrays


def _json_tensor(data: Any, name: str, datatype: str, dtype: np.dtype) -> np.ndarray:
    """JSON `data` as `dtype`, refusing values numpy would coerce silently ("1.5" -> 1.5, 1.7 -> 1, 300 -> 44)."""
    try:
        raw = np.asarray(data)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise InvalidInput(f"input {name!r}: data is not a (nested) list of {datatype} values ({exc})") from None
    if raw.size == 0:
        return raw.astype(dtype)
    if raw.dtype.kind not in _ACCEPTED_KINDS[dtype.kind]:
        found = {"U": "strings", "S": "strings", "O": "null, objects or out-of-range integers",
                 "b": "booleans", "f": "non-integer numbers"}.get(raw.dtype.kind, str(raw.dtype))
        raise BadRequest(f"input {name!r}: {datatype} data must be "
                         f"{'booleans' if dtype.kind == 'b' else 'numbers'}, got {found}")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = raw.min(), raw.max()
        if low < info.min or high > info.max:
            raise BadRequest(f"input {name!r}: {datatype} data must lie in [{info.min}, {info.max}], "
                             f"got values in [{low}, {high}]")
    return raw.astype(dtype, copy=False)


def _flag(params: Any, key: str, default: bool, where: str) -> bool:
    value = params.get(key, default) if isinstance(params, dict) else default
    if not isinstance(value, bool):
        raise BadRequest(f"{where}.{key} must be true or false, got {value!r}")
    return value


def requested_outputs(header: dict[str, Any], available: list[str]) -> list[tuple[str, bool]]:
    """[(output name, binary?)] in the order requested (all outputs when none are named)."""
    binary_default = _flag(header.get("parameters") or {}, "binary_data_output", False, "parameters")
    outputs = header.get("outputs")
    if outputs is None:
        return [(name, binary_default) for name in available]
    if not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list")
    chosen = []
    for entry in outputs:
        if not isinstance(entry, dict) or entry.get("name") not in available:
            raise InvalidInput(f"unknown output {entry!r}; available: {available}")
        binary = _flag(entry.get("parameters") or {}, "binary_data", binary_default,
                       f"outputs[{entry['name']!r}].parameters")
        chosen.append((entry["name"], binary))
    return chosen


# Values per orjson call when writing a JSON tensor: orjson holds the GIL for a whole call (5M values: ~0.3 s),
# so a large tensor is written in slices, between which the event loop's thread gets the GIL back.
JSON_SLICE = 1 << 16


def encode_response(header: dict[str, Any], outputs: dict[str, np.ndarray],
                    chosen: list[tuple[str, bool]]) -> tuple[bytes, int | None]:
    """Return (body, JSON header length or None when no tensor is binary)."""
    blobs: list[bytes] = []
    entries = []
    data_parts: dict[bytes, np.ndarray] = {}
    nonce = secrets.token_hex(8)  # placeholders no client-chosen string (e.g. the request id) can equal
    for name, binary in chosen:
        array = np.ascontiguousarray(outputs[name])
        datatype = NUMPY_TO_OIP[array.dtype]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif array.size <= JSON_SLICE:
            entry["data"] = array.reshape(-1)
        else:
            placeholder = f"@tensor-data-{len(data_parts)}-{nonce}@"
            data_parts[orjson.dumps(placeholder)] = array.reshape(-1)
            entry["data"] = placeholder
        entries.append(entry)
    header = {**header, "outputs": entries}
    # orjson writes numpy arrays natively: 1M float32 values in ~40 ms here, tolist + json.dumps took ~1 s.
    json_bytes = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY, default=_tolist)
    for placeholder, flat in data_parts.items():
        json_bytes = json_bytes.replace(placeholder, _json_array_in_slices(flat), 1)
    if not blobs:
        return json_bytes, None
    return json_bytes + b"".join(blobs), len(json_bytes)


def _json_array_in_slices(flat: np.ndarray) -> bytes:
    """`orjson.dumps(flat)`, written JSON_SLICE values at a time."""
    pieces = [orjson.dumps(flat[i:i + JSON_SLICE], option=orjson.OPT_SERIALIZE_NUMPY, default=_tolist)[1:-1]
              for i in range(0, flat.size, JSON_SLICE)]
    return b"[" + b",".join(pieces) + b"]"


def _tolist(value: Any) -> Any:
    """orjson fallback for arrays it does not write natively (e.g. big-endian): plain lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")
