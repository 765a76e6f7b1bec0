"""How HTTP answers an error: every `ServiceError` and FastAPI's own (validation, routing, unexpected) in the
one shape `service.errors.error_body` decides."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import PayloadTooLarge, ServiceError, error_body, is_oip_path

log = logging.getLogger(__name__)


def error_response(request: Request, status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """Task endpoints: {"error": {"code", "message", "details"}}; OIP routes: {"error": "message"}, and a request
    the server rejects there is a 400, as Triton and KServe answer it (task endpoints keep 422)."""
    if status == 422 and is_oip_path(request.url.path):
        status = 400
    return JSONResponse(error_body(request.url.path, code, message, details), status_code=status, headers=headers)


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(request, exc.status_code, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(request, 400, "bad_request", "request body is not valid JSON: "
                                  + _describe_validation(errors))
        safe = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
        return error_response(request, 422, "invalid_input", _describe_validation(errors), safe)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, PayloadTooLarge):
            cause = exc.__cause__
            return error_response(request, cause.status_code, cause.code, cause.message)
        codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}
        return error_response(request, exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        # Safety net for JSON parsed with the stdlib anywhere: deep nesting is the client's input, not a fault.
        return error_response(request, 400, "bad_request", "request body is nested too deeply")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(request, 500, "internal", f"internal error ({type(exc).__name__})")
