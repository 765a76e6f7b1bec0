"""Open Inference Protocol v2 REST (KServe / Triton), so that `tritonclient.http` works unchanged."""

from __future__ import annotations

import time
import zlib
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from service import __version__
from service.auth import require_admin
from service.batching import RequestContext
from service.errors import BadRequest, InvalidInput, PayloadTooLarge, ServiceError
from service.families.base import hub_of, request_context
from service.oip.tensors import HEADER_LENGTH, decode_inputs, encode_response, requested_outputs, split_body
from service.repository import LoadedVersion

SERVER_NAME = "research-serving"


class LoadFailed(ServiceError):
    status_code = 400  # as Triton answers a failed load; the previous version keeps serving
    code = "load_failed"

PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])


def _version_number(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadRequest(f"model version must be a positive integer, got {raw!r}")
    return int(raw)


def _lookup(request: Request, model: str, version: str | None) -> LoadedVersion:
    loaded = hub_of(request).get(model, _version_number(version))
    request.state.model_name = loaded.name
    request.state.model_version = str(loaded.version)
    return loaded


@router.get("")
def server_metadata(request: Request) -> dict[str, Any]:
    extensions = ["binary_tensor_data", "parameters"]
    if request.app.state.settings.admin_token:
        extensions.append("model_repository")
    return {"name": SERVER_NAME, "version": __version__, "extensions": extensions}


@router.get("/health/live")
def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
def ready(request: Request) -> JSONResponse:
    is_ready = hub_of(request).ready
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


def _metadata(loaded: LoadedVersion, request: Request) -> dict[str, Any]:
    graph = loaded.manifest.primary
    serving = sorted(v.version for v in hub_of(request).serving() if v.name == loaded.name)
    return {
        "name": loaded.name,
        "versions": [str(v) for v in serving],
        "platform": PLATFORMS[graph.format],
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in graph.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in graph.outputs],
        "parameters": {"family": loaded.manifest.family, "task": loaded.manifest.task,
                       "max_batch_size": loaded.manifest.batching.max_batch_size if graph.batchable else 0},
    }


@router.get("/models/{model}")
def model_metadata(model: str, request: Request) -> dict[str, Any]:
    return _metadata(_lookup(request, model, None), request)


@router.get("/models/{model}/versions/{version}")
def model_version_metadata(model: str, version: str, request: Request) -> dict[str, Any]:
    return _metadata(_lookup(request, model, version), request)


@router.get("/models/{model}/ready")
def model_ready(model: str, request: Request) -> dict[str, Any]:
    _lookup(request, model, None)
    return {"name": model, "ready": True}


@router.get("/models/{model}/versions/{version}/ready")
def model_version_ready(model: str, version: str, request: Request) -> dict[str, Any]:
    _lookup(request, model, version)
    return {"name": model, "version": version, "ready": True}


async def _read_body(request: Request) -> bytes:
    body = await request.body()
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding in ("identity", ""):
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadRequest(f"unsupported Content-Encoding {encoding!r} (use gzip or deflate)")
    limit = request.app.state.settings.max_request_bytes
    decompressor = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"body is not valid {encoding} data: {exc}") from exc
    if len(data) > limit:
        raise PayloadTooLarge(f"decompressed body exceeds {limit} bytes")
    return data


def _timeout_context(request: Request, header: dict[str, Any]) -> RequestContext:
    ctx = request_context(request)
    params = header.get("parameters") or {}
    timeout_us = params.get("timeout") if isinstance(params, dict) else None
    if timeout_us is not None:
        if not isinstance(timeout_us, int | float) or isinstance(timeout_us, bool) or timeout_us <= 0:
            raise InvalidInput(f"parameters.timeout must be a positive number of microseconds, got {timeout_us!r}")
        deadline = time.monotonic() + timeout_us / 1e6
        ctx.deadline = deadline if ctx.deadline is None else min(ctx.deadline, deadline)
    return ctx


async def _infer(request: Request, model: str, version: str | None) -> Response:
    loaded = _lookup(request, model, version)
    body = await _read_body(request)
    header, tail = split_body(body, request.headers.get(HEADER_LENGTH))
    inputs = decode_inputs(header, tail)
    graph = loaded.manifest.primary
    chosen = requested_outputs(header, [t.name for t in graph.outputs])
    ctx = _timeout_context(request, header)
    outputs = await loaded.infer(inputs, ctx)
    response_header: dict[str, Any] = {"model_name": loaded.name, "model_version": str(loaded.version)}
    if isinstance(header.get("id"), str):
        response_header["id"] = header["id"]
    payload, json_length = encode_response(response_header, outputs, chosen)
    if json_length is None:
        return Response(payload, media_type="application/json")
    return Response(payload, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(json_length)})


@router.post("/models/{model}/infer")
async def infer(model: str, request: Request) -> Response:
    return await _infer(request, model, None)


@router.post("/models/{model}/versions/{version}/infer")
async def infer_version(model: str, version: str, request: Request) -> Response:
    return await _infer(request, model, version)


# ---- repository extension (admin) --------------------------------------------------------------------
repository_router = APIRouter(prefix="/v2/repository", tags=["Model repository (admin)"],
                              dependencies=[Depends(require_admin)])


async def _optional_json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body.strip():
        return {}
    header, _ = split_body(body, None)
    return header


@repository_router.post("/index")
async def repository_index(request: Request) -> list[dict[str, str]]:
    body = await _optional_json(request)
    rows = hub_of(request).index()
    if body.get("ready") is True:
        rows = [r for r in rows if r["state"] == "READY"]
    return rows


@repository_router.post("/models/{model}/load")
async def load_model(model: str, request: Request) -> dict[str, Any]:
    body = await _optional_json(request)
    params = body.get("parameters") or {}
    version = _version_number(str(params["version"])) if isinstance(params, dict) and "version" in params else None
    try:
        loaded = await hub_of(request).load(model, version)
    except ServiceError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken artifact is reported; the old version keeps serving
        raise LoadFailed(f"model {model!r} failed to load: {type(exc).__name__}: {exc}") from exc
    return {"name": loaded.name, "version": str(loaded.version), "state": "READY"}


@repository_router.post("/models/{model}/unload")
async def unload_model(model: str, request: Request) -> dict[str, Any]:
    await hub_of(request).unload(model)
    return {"name": model, "state": "UNAVAILABLE"}
