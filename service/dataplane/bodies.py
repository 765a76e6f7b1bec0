"""The one JSON parser of every request body (task routes, OIP inference headers, repository routes).

orjson parses (RFC 8259 only: `NaN`, `Infinity` and other extensions are refused, whatever field they sit in;
nesting is limited to 1024 levels), and one mapping turns its failures into client errors: 400 for a body
that is not JSON (naming the non-finite literal when that is what was sent), 413 for a body that holds more
values than any valid request can (counted before parsing), 422 naming the fields a schema refuses.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from service.errors import BadRequest, InvalidInput, PayloadTooLarge

ModelT = TypeVar("ModelT", bound=BaseModel)

_NON_FINITE = (b"NaN", b"Infinity")
_COUNT_CHUNK = 1 << 22  # numpy releases the GIL per chunk: counting a 64 MB body never stalls the loop


def parse_json(raw: bytes) -> Any:
    """The parsed body; BadRequest (400) for anything that is not strict JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc):
            raise BadRequest("request JSON is nested too deeply (more than 1024 levels)") from None
        if any(token in raw for token in _NON_FINITE) or "infinity" in str(exc):
            raise BadRequest(f"request body is not valid JSON: NaN and Infinity are not JSON values (non-finite "
                             f"numbers are not accepted): {exc}") from None
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def json_value_count(raw: bytes) -> int:
    """Upper bound on the values a JSON text holds (its commas + 1), counted without parsing it."""
    data = np.frombuffer(raw, np.uint8)
    return 1 + sum(int(np.count_nonzero(data[i:i + _COUNT_CHUNK] == ord(",")))
                   for i in range(0, data.size, _COUNT_CHUNK))


def check_value_count(raw: bytes, max_values: int | None, what: str) -> None:
    """413 before parsing when the body holds more than `max_values` values (parsed JSON costs ~75 bytes of
    Python objects per value: refuse bodies no valid request can be first)."""
    if max_values is not None and (count := json_value_count(raw)) > max_values:
        raise PayloadTooLarge(f"request body holds about {count} JSON values; a valid {what} holds at most "
                              f"{max_values}: send fewer or smaller items per request",
                              details={"values": count, "limit": max_values})


def validate_json(schema: type[ModelT], raw: bytes, max_values: int | None = None, what: str = "request") -> ModelT:
    """`raw` parsed by `parse_json` and validated against `schema` (CPU work: call it on the work pool)."""
    check_value_count(raw, max_values, what)
    parsed = parse_json(raw)
    try:
        return schema.model_validate(parsed)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors[:20]]
        where = "; ".join(f"{'.'.join(str(p) for p in d['loc']) or 'body'}: {d['msg']}" for d in details[:5])
        raise InvalidInput(f"invalid request: {where}", details=details) from None
