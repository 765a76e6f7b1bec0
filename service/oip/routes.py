"""Open Inference Protocol v2 REST (KServe / Triton), so that `tritonclient.http` works unchanged."""

from __future__ import annotations

import zlib
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from service.dataplane.bodies import parse_json
from service.dataplane.context import timeout_seconds
from service.dataplane.plane import server_metadata as oip_server_metadata
from service.dataplane.plane import version_number
from service.errors import BadRequest, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.http.auth import require_admin, require_index_access
from service.http.request import dataplane_of, hub_of, media_type, request_context, resolve_version, workpool_of
from service.models.version import LoadedVersion, VersionStatus
from service.oip.tensors import HEADER_LENGTH, decode_inputs, encode_response, requested_outputs, split_body

# Media types of an inference body: JSON, or Triton's binary extension (JSON header + raw tensor bytes).
# No Content-Type at all is accepted too: tritonclient sends none.
INFER_MEDIA_TYPES = ("application/json", "application/octet-stream")
ENCODINGS = {"gzip": 31, "deflate": 15}  # zlib wbits
MAX_REPOSITORY_BODY = 64 * 1024  # index/load bodies are a few bytes of JSON
# JSON this small decodes in tens of microseconds: cheaper on the loop than the hop to the work pool.
INLINE_DECODE_BYTES = 16 * 1024
# Outputs this small encode (orjson, or raw bytes) in tens of microseconds; larger ones on the work pool.
INLINE_ENCODE_BYTES = 64 * 1024


router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])


def _lookup(request: Request, model: str, version: str | None) -> LoadedVersion:
    return resolve_version(request, model, version_number(version))


@router.get("")
async def server_metadata(request: Request) -> dict[str, Any]:
    return oip_server_metadata(request.app.state.settings)


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", responses={503: {"description": "not ready: models still loading", "content": {
    "application/json": {"schema": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}}}})
async def ready(request: Request) -> JSONResponse:
    is_ready = hub_of(request).ready
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


@router.get("/models/{model}")
async def model_metadata(model: str, request: Request) -> dict[str, Any]:
    return dataplane_of(request).model_metadata(_lookup(request, model, None))


@router.get("/models/{model}/versions/{version}")
async def model_version_metadata(model: str, version: str, request: Request) -> dict[str, Any]:
    return dataplane_of(request).model_metadata(_lookup(request, model, version))


@router.get("/models/{model}/ready")
async def model_ready(model: str, request: Request) -> dict[str, Any]:
    _lookup(request, model, None)
    return {"name": model, "ready": True}


@router.get("/models/{model}/versions/{version}/ready")
async def model_version_ready(model: str, version: str, request: Request) -> dict[str, Any]:
    _lookup(request, model, version)
    return {"name": model, "version": version, "ready": True}


def _check_infer_headers(request: Request) -> str | None:
    """415 for a body that is neither JSON nor binary tensors; 400 for an unknown Content-Encoding.
    Returns the encoding to inflate (None for identity). Cheap: runs before the body is read."""
    content_type = media_type(request)
    if content_type and content_type not in INFER_MEDIA_TYPES and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"content type {content_type!r}: send application/json, or "
                                   "application/octet-stream with Inference-Header-Content-Length")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("identity", ""):
        return None
    if encoding not in ENCODINGS:
        raise BadRequest(f"unsupported Content-Encoding {encoding!r} (use gzip or deflate)")
    return encoding


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    decompressor = zlib.decompressobj(wbits=ENCODINGS[encoding])
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"body is not valid {encoding} data: {exc}") from exc
    if len(data) > limit:
        raise PayloadTooLarge(f"decompressed body exceeds {limit} bytes")
    return data


def _timeout_s(header: dict[str, Any]) -> float | None:
    """OIP `parameters.timeout` (microseconds) in seconds; 400 unless a positive finite number."""
    params = header.get("parameters")
    if params is None:
        return None
    if not isinstance(params, dict):
        raise BadRequest(f"'parameters' must be an object, got {type(params).__name__}")
    timeout_us = params.get("timeout")
    return None if timeout_us is None else timeout_seconds(timeout_us)


def _decode_request(body: bytes, encoding: str | None, limit: int, header_length: str | None,
                    output_names: list[str]) -> tuple[dict[str, Any], dict, list[tuple[str, bool]], float | None]:
    """Everything request-sized (inflate, JSON, tensors): runs on the work pool, never on the event loop."""
    if encoding is not None:
        body = _inflate(body, encoding, limit)
    header, tail = split_body(body, header_length)
    inputs = decode_inputs(header, tail)
    return header, inputs, requested_outputs(header, output_names), _timeout_s(header)


def _json_bytes(body: bytes, header_length: str | None) -> int:
    """Bytes of JSON to parse: binary tensor data after the header is only wrapped by numpy, not parsed."""
    if header_length is not None and header_length.isascii() and header_length.isdigit():
        return min(int(header_length[:12]), len(body))
    return len(body)


async def infer_request(request: Request, model: str, version: str | None) -> Response:
    """One OIP inference; also called by `service.oip.fastpath` without FastAPI's routing."""
    loaded = _lookup(request, model, version)
    encoding = _check_infer_headers(request)
    pool = workpool_of(request)
    with pool.reserve("OIP inference"):  # 429 before the body is read; holds a place while it is
        body = await request.body()
    ctx = request_context(request)
    graph = loaded.manifest.primary
    decode_args = (body, encoding, request.app.state.settings.max_request_bytes, request.headers.get(HEADER_LENGTH),
                   [t.name for t in graph.outputs])
    inline = encoding is None and _json_bytes(body, request.headers.get(HEADER_LENGTH)) <= INLINE_DECODE_BYTES
    plane = dataplane_of(request)
    header, inputs, chosen, timeout_s = await plane.decode(_decode_request, *decode_args, inline=inline, ctx=ctx,
                                                           what="OIP request decoding")
    ctx.tighten(timeout_s)
    # A reload may have swapped versions while the body was decoded: submit to the one serving now.
    current = _lookup(request, model, version)
    if current is not loaded:
        loaded = current
        chosen = requested_outputs(header, [t.name for t in loaded.manifest.primary.outputs])
    outputs = await plane.infer(loaded, inputs, ctx)
    response_header: dict[str, Any] = {"model_name": loaded.name, "model_version": str(loaded.version)}
    if isinstance(header.get("id"), str):
        response_header["id"] = header["id"]
    if sum(a.nbytes for a in outputs.values()) <= INLINE_ENCODE_BYTES:
        payload, json_length = encode_response(response_header, outputs, chosen)
    else:  # request-sized serialisation off the loop; admitted already, so never refused now
        payload, json_length = await pool.run(encode_response, response_header, outputs, chosen, ctx=ctx,
                                              what="OIP response encoding", admitted=True)
    if json_length is None:
        return Response(payload, media_type="application/json")
    return Response(payload, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(json_length)})


@router.post("/models/{model}/infer")
async def infer(model: str, request: Request) -> Response:
    return await infer_request(request, model, None)


@router.post("/models/{model}/versions/{version}/infer")
async def infer_version(model: str, version: str, request: Request) -> Response:
    return await infer_request(request, model, version)


# ---- repository extension: the index is public as in Triton, load/unload need the admin token ---------
repository_router = APIRouter(prefix="/v2/repository", tags=["Model repository"])
ADMIN = [Depends(require_admin)]


async def _optional_json(request: Request) -> dict[str, Any]:
    """The small optional JSON body of the repository routes (tritonclient sends no Content-Type)."""
    content_type = media_type(request)
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaType(f"content type {content_type!r}: send application/json")
    body = await request.body()
    if len(body) > MAX_REPOSITORY_BODY:
        raise PayloadTooLarge(f"repository request body exceeds {MAX_REPOSITORY_BODY} bytes")
    if not body.strip():
        return {}
    parsed = parse_json(body)
    if not isinstance(parsed, dict):
        raise InvalidInput("repository request body must be a JSON object")
    return parsed


@repository_router.post("/index", dependencies=[Depends(require_index_access)])
async def repository_index(request: Request) -> list[dict[str, str]]:
    body = await _optional_json(request)
    if not isinstance(body.get("ready", False), bool):
        raise BadRequest(f"'ready' must be a boolean, got {body['ready']!r}")
    return dataplane_of(request).index(ready_only=body.get("ready") is True)


@repository_router.post("/models/{model}/load", dependencies=ADMIN)
async def load_model(model: str, request: Request) -> dict[str, Any]:
    body = await _optional_json(request)
    params = body.get("parameters") or {}
    version = version_number(str(params["version"])) if isinstance(params, dict) and "version" in params else None
    loaded = await dataplane_of(request).load(model, version)
    return {"name": loaded.name, "version": str(loaded.version), "state": VersionStatus.READY.value}


@repository_router.post("/models/{model}/unload", dependencies=ADMIN)
async def unload_model(model: str, request: Request) -> dict[str, Any]:
    await dataplane_of(request).unload(model)
    return {"name": model, "state": VersionStatus.UNAVAILABLE.value}
