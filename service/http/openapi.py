"""The app's OpenAPI document: real error statuses in the service's error shapes, and runnable examples.

FastAPI's generated document knows neither our error bodies nor the statuses our handlers answer (it offers
its own 422 `HTTPValidationError`, which our handler never sends), and its request examples are static. This
module post-processes the generated document, centrally rather than per route:

- two error schemas: `TaskError` (`{"error": {"code", "message", "details"}}`, task routes) and `OipError`
  (`{"error": "..."}`, /v2 routes), and per operation the error statuses it can answer, from what the route
  does (reads a body, on the work pool, names a model or version, needs the admin token);
- request examples built from the served versions (`FamilyPlugin.openapi_examples`, and for OIP inference the
  smallest served model's input shapes), so that "Try it out" in /docs answers 200.

The document is built when first requested (the route part once, the examples per set of served versions);
before the model hub is ready it has no examples, and none are cached.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from math import prod
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, routing
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel

from families.manifest import OIP_TO_NUMPY
from service.families import specs
from service.http.auth import require_admin, require_index_access
from service.http.protocol import UNLIMITED_PATHS

if TYPE_CHECKING:
    from fastapi.dependencies.models import Dependant

    from service.models.hub import ModelHub
    from service.models.version import LoadedVersion
    from service.plugin import FamilyPlugin

log = logging.getLogger(__name__)

TASK_ERROR = "TaskError"
OIP_ERROR = "OipError"
FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")
MAX_OIP_EXAMPLE_VALUES = 4096  # the OIP example is zeros of one model's input: keep it readable

ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    TASK_ERROR: {
        "title": TASK_ERROR, "type": "object", "required": ["error"],
        "description": "Error body of the task endpoints.",
        "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string", "description": "machine-readable kind, e.g. invalid_input, payload_too_large"},
            "message": {"type": "string", "description": "what is wrong, naming the field and the limit"},
            "details": {"description": "structured context (field, limit, validation errors), when there is any"},
        }}},
    },
    OIP_ERROR: {
        "title": OIP_ERROR, "type": "object", "required": ["error"],
        "description": "Error body of the Open Inference Protocol (/v2) routes.",
        "properties": {"error": {"type": "string"}},
    },
}

STATUS_TEXT = {
    400: "Bad request: malformed body or header, or a parameter value out of its syntax",
    401: "Missing bearer token (Authorization: Bearer <token>)",
    403: "Invalid admin token",
    404: "Unknown model or version (admin routes: also when the admin API is disabled)",
    409: "Conflict with the current state",
    413: "Body, or a size declared in it, over a limit (the message names it)",
    415: "Unsupported Content-Type",
    422: "The request does not fit the schema or the served model (the message names the field)",
    429: "Overloaded: retry after `Retry-After` seconds",
    503: "Model not loaded yet, or the server is at its connection limit: retry after `Retry-After`",
    504: "Deadline (X-Request-Timeout-Ms or the model's default) exceeded",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}

HTTP_LAYER_NOTE = (
    "\n\nErrors: task endpoints answer `{\"error\": {\"code\", \"message\", \"details\"}}` (`TaskError`), /v2 routes "
    "`{\"error\": \"...\"}` (`OipError`); each operation lists the statuses it can answer. Below the routes, the "
    "HTTP layer answers 431 (headers over SERVICE_MAX_HEADER_BYTES), 408 (headers not complete within "
    "SERVICE_HEADER_TIMEOUT_S) and 503 (connection limits) in the same shapes. Requests that carry a body "
    "(task endpoints, /v2 inference) take an optional `X-Request-Timeout-Ms` header: a deadline counted from "
    "the request's arrival, answered 504 when it passes (left out of the parameters: a fuzzer's 1e-300 ms "
    "deadline says nothing about the route)."
)


# The OIP inference handler reads its body itself (JSON, or a JSON header followed by binary tensors), so
# FastAPI sees no body; this is the protocol's request and response, for the docs and for API fuzzers.
_PARAMETERS = {"type": "object", "description": "protocol parameters (e.g. timeout in microseconds, "
               "binary_data_output)", "additionalProperties": True}
# As enforced (issue 26 item 13): at least one input, and in a JSON-only request every input carries its `data`
# (binary tensors come with the octet-stream framing below); names, shapes and datatypes are the model's
# (GET /v2/models/{model}).
OIP_INFER_REQUEST = {"type": "object", "required": ["inputs"], "properties": {
    "id": {"type": "string"},
    "parameters": _PARAMETERS,
    "inputs": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["name", "shape", "datatype",
                                                                                       "data"], "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": sorted(OIP_TO_NUMPY)},
        "parameters": _PARAMETERS,
        "data": {"type": "array", "description": "the values, row-major (flat or nested)"},
    }}},
    "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "parameters": _PARAMETERS}}},
}}
OIP_INFER_RESPONSE = {"type": "object", "required": ["model_name", "outputs"], "properties": {
    "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
    "outputs": {"type": "array", "items": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
        "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string"}, "parameters": {"type": "object"}, "data": {"type": "array"}}}},
}}
BINARY_NOTE = ("Triton's binary tensor extension: the JSON header (`Inference-Header-Content-Length` bytes) "
               "followed by the raw tensors")


def document_oip_infer(operation: dict[str, Any]) -> None:
    operation.setdefault("requestBody", {"required": True, "content": {
        "application/json": {"schema": copy.deepcopy(OIP_INFER_REQUEST)},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary", "description": BINARY_NOTE}},
    }})
    operation.setdefault("responses", {})["200"] = {"description": "the outputs", "content": {
        "application/json": {"schema": copy.deepcopy(OIP_INFER_RESPONSE)},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary", "description": BINARY_NOTE}},
    }}


# ---- which statuses an operation can answer ---------------------------------------------------------

def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for dependency in dependant.dependencies:
        if dependency.call is not None:
            yield dependency.call
        yield from _calls(dependency)


def _reads_body_on_pool(route: APIRoute) -> bool:
    """Task POST routes and OIP inference read their body through the work pool, under a deadline."""
    return bool({"POST", "PUT"} & route.methods) and not route.path.startswith("/v2/repository")


def _types(schema: dict[str, Any]) -> set[str]:
    """The JSON types a parameter schema allows (`anyOf` for optional ones)."""
    found = {schema["type"]} if isinstance(schema.get("type"), str) else set()
    for option in schema.get("anyOf", []):
        found |= _types(option)
    return found


def error_statuses(route: APIRoute, operation: dict[str, Any]) -> set[int]:
    """The error statuses `route` can answer, from what it does."""
    params = operation.get("parameters", [])
    names = {p["name"] for p in params}
    statuses = set() if route.path in UNLIMITED_PATHS else {503}  # the connection limits
    if "model" in names or "version" in names:
        statuses |= {404, 503}  # unknown / not loaded
    if any(p["in"] == "path" and p["name"] == "version" for p in params):
        statuses.add(400)  # version path segments are parsed by the handler
    if any(_types(p.get("schema", {})) - {"string", "null"} for p in params) \
            or (not route.path.startswith("/v2") and "model" in names):
        statuses.add(422)  # typed query values; a task route given another family's model
    if {"POST", "PUT"} & route.methods:  # PUT: /admin/rollouts/{model} reads a JSON body as POST routes do
        statuses |= {400, 413, 415, 422}
    if route.path.startswith("/v2"):
        statuses.discard(422)  # OIP answers every rejected request with 400 (app.error_response)
    if _reads_body_on_pool(route):
        statuses |= {429, 504}
    calls = set(_calls(route.dependant))
    if require_admin in calls or require_index_access in calls:
        statuses |= {401, 403, 404}
    return statuses


def _error_response(status: int, schema: str, existing: dict[str, Any] | None) -> dict[str, Any]:
    response = {"description": (existing or {}).get("description") or STATUS_TEXT.get(status, "Error")}
    response["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}
    headers = {**(existing or {}).get("headers", {})}
    if status in (429, 503):
        headers.update(RETRY_AFTER)
    if status == 401:
        headers["WWW-Authenticate"] = {"description": "Bearer", "schema": {"type": "string"}}
    if headers:
        response["headers"] = headers
    return response


def _is_fastapi_validation(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return schema.get("$ref", "").rsplit("/", 1)[-1] in FASTAPI_VALIDATION


def document_errors(doc: dict[str, Any], route: APIRoute, operation: dict[str, Any]) -> None:
    """Replace FastAPI's 422 and add every status the route can answer, in the route's error shape; a status
    a route documents itself keeps its description (and its content, unless it has none)."""
    schema = OIP_ERROR if route.path.startswith("/v2") else TASK_ERROR
    responses = operation.setdefault("responses", {})
    for key in list(responses):
        if key == "422" and _is_fastapi_validation(responses[key]):
            del responses[key]
    for status in sorted(error_statuses(route, operation) | {int(k) for k in responses if k[0] in "45"}):
        existing = responses.get(str(status))
        if existing is not None and existing.get("content"):
            continue  # documented by the route itself (e.g. readiness's {"ready": false})
        responses[str(status)] = _error_response(status, schema, existing)


# ---- examples from the served versions --------------------------------------------------------------

def _served_default(hub: ModelHub, name: str) -> LoadedVersion | None:
    try:
        return hub.get(name)
    except Exception:  # noqa: BLE001 - not served (unknown, loading, failed): that family has no example
        return None


def _zeros(shape: list[int], datatype: str) -> list[Any]:
    value: Any = False if datatype == "BOOL" else 0
    return [value] * prod(shape)


def oip_example(hub: ModelHub) -> tuple[LoadedVersion, dict[str, Any]] | None:
    """An inference request for the served model with the smallest fixed-shape inputs (a family that declares
    `oip_example_first` first)."""
    candidates = []
    for loaded in hub.serving():
        inputs = loaded.manifest.primary.inputs
        shapes = [[1 if i == 0 and d == -1 else d for i, d in enumerate(t.shape)] for t in inputs]
        if any(d < 0 for s in shapes for d in s) or any(t.datatype == "BYTES" for t in inputs):
            continue  # dynamic non-batch axes (e.g. image sizes) have no one-size example
        size = sum(prod(s) for s in shapes)
        if size <= MAX_OIP_EXAMPLE_VALUES:
            first = getattr(specs().get(loaded.manifest.family), "oip_example_first", False)
            candidates.append((not first, size, loaded.name, loaded, inputs, shapes))
    if not candidates:
        return None
    *_, loaded, inputs, shapes = min(candidates, key=lambda c: c[:3])
    body = {"inputs": [{"name": t.name, "shape": s, "datatype": t.datatype, "data": _zeros(s, t.datatype)}
                       for t, s in zip(inputs, shapes, strict=True)]}
    return loaded, body


def _set_request_example(operation: dict[str, Any], value: Any, summary: str) -> None:
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if content is None:
        return
    content.get("schema", {}).pop("examples", None)  # static examples do not fit the served model
    content["examples"] = {"served": {"summary": summary, "value": value}}


def _set_param_example(operation: dict[str, Any], name: str, value: str) -> None:
    for param in operation.get("parameters", []):
        if param["name"] == name and param["in"] == "path":
            param["example"] = value


def add_examples(doc: dict[str, Any], hub: ModelHub, families: dict[str, FamilyPlugin]) -> None:
    paths = doc.get("paths", {})
    for family in families.values():
        served = _served_default(hub, family.name)
        if served is None:
            continue
        try:
            examples = family.openapi_examples(served, served.prepared)
        except Exception:  # noqa: BLE001 - a family's example must never take the documentation down
            log.exception("OpenAPI examples of %s v%d failed", served.name, served.version)
            continue
        for path, value in examples.items():
            operation = paths.get(path, {}).get("post")
            if operation is not None:
                _set_request_example(operation, value, f"accepted by {served.name} v{served.version}")
    oip = oip_example(hub)
    if oip is None:
        return
    loaded, body = oip
    for path, item in paths.items():
        if not path.startswith("/v2/models/{model}"):
            continue
        for method, operation in item.items():
            _set_param_example(operation, "model", loaded.name)
            _set_param_example(operation, "version", str(loaded.version))
            if method == "post" and path.endswith("/infer"):
                _set_request_example(operation, body, f"zeros for {loaded.name} v{loaded.version}")


# ---- the document -----------------------------------------------------------------------------------

def api_routes(app: FastAPI) -> Iterator[APIRoute]:
    """Every documented route with its full path and dependencies (routers are included lazily)."""
    for context in routing.iter_route_contexts(app.routes):
        route = getattr(context, "route", context.original_route)
        if isinstance(route, APIRoute) and route.include_in_schema:
            yield route


def base_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document with the error schemas and statuses, without examples (it depends on routes only)."""
    doc = copy.deepcopy(get_openapi(
        title=app.title, version=app.version, openapi_version=app.openapi_version, summary=app.summary,
        description=(app.description or "") + HTTP_LAYER_NOTE, routes=app.routes, tags=app.openapi_tags,
        servers=app.servers, separate_input_output_schemas=app.separate_input_output_schemas,
    ))
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in FASTAPI_VALIDATION:
        schemas.pop(name, None)
    schemas.update(copy.deepcopy(ERROR_SCHEMAS))
    for route in api_routes(app):
        item = doc["paths"].get(route.path_format, {})
        for method in route.methods:
            operation = item.get(method.lower())
            if operation is None:
                continue
            if route.path.startswith("/v2/models/") and route.path.endswith("/infer"):
                document_oip_infer(operation)
            document_errors(doc, route, operation)
    return doc


def _served_key(app: FastAPI) -> tuple[tuple[str, int], ...] | None:
    """What the examples depend on; None while the hub is not ready (no examples yet, nothing cached)."""
    hub = getattr(app.state, "hub", None)
    if hub is None or not hub.ready:
        return None
    return tuple(sorted((v.name, v.version) for v in hub.serving()))


def install_openapi(app: FastAPI, families: dict[str, FamilyPlugin]) -> None:
    """Serve the document at /openapi.json (and /docs): the base is built on first request (~0.2 s, once:
    the routes are fixed by then); the examples are added per set of served versions, once the hub is ready."""
    cache: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if "base" not in cache:
            cache["base"] = base_document(app)
        key = _served_key(app)
        if key is None:
            return cache["base"]
        if cache.get("key") != key:
            doc = copy.deepcopy(cache["base"])
            add_examples(doc, app.state.hub, families)
            cache.update(key=key, doc=doc)
        return cache["doc"]

    app.openapi = openapi  # type: ignore[method-assign]


def _inline_defs(schema: dict) -> dict:
    """`schema` with its `$defs` substituted where referenced: FastAPI does not hoist the `$defs` of an
    `openapi_extra` schema into components, so a `$ref` to them would dangle."""
    defs = schema.pop("$defs", {})

    def resolve(node: object, seen: frozenset[str]) -> object:
        if isinstance(node, list):
            return [resolve(v, seen) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            if name in seen:
                raise ValueError(f"{name} is recursive: it cannot be inlined into an OpenAPI request body")
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return resolve({**defs[name], **rest}, seen | {name})
        return {k: resolve(v, seen) for k, v in node.items()}

    return resolve(schema, frozenset())  # type: ignore[return-value]


def json_body_openapi(schema: type[BaseModel]) -> dict:
    """`openapi_extra` for a route that reads its body with `parse_json_body` (FastAPI cannot see it)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": _inline_defs(schema.model_json_schema())}}}}
