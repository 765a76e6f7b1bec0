"""One error type hierarchy, and the one place that decides the error body (`error_body`): task endpoints get
`{"error": {"code", "message", "details"}}`, OIP routes `{"error": "..."}`; the app and the HTTP protocol use it."""

from __future__ import annotations

import re
from typing import Any


class ServiceError(Exception):
    status_code = 500
    code = "internal"

    def __init__(self, message: str, *, details: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}


class BadRequest(ServiceError):
    status_code = 400
    code = "bad_request"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class InvalidInput(ServiceError):
    status_code = 422
    code = "invalid_input"


class Overloaded(ServiceError):
    status_code = 429
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s))})


class NotReady(ServiceError):
    status_code = 503
    code = "not_ready"

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class DeadlineExceeded(ServiceError):
    status_code = 504
    code = "deadline_exceeded"


class InferenceFailed(ServiceError):
    """The model raised on a well-formed request: a server fault, reported without a traceback."""

    status_code = 500
    code = "inference_failed"


class ClientDisconnected(ServiceError):
    """The client went away before its request was computed (499, nginx's code; nobody reads the answer)."""

    status_code = 499
    code = "client_disconnected"


class LoadFailed(ServiceError):
    """A model version did not load; the previous version keeps serving."""

    status_code = 400  # as Triton answers a failed load
    code = "load_failed"


_ABSOLUTE_PATH = re.compile(r"""(?<![\w.:/~])/(?:[^\s/'"():,]+/)+([^\s/'"():,]*)""")


def redact_paths(text: str) -> str:
    """`text` with every absolute filesystem path cut to its last component: error bodies reach clients,
    paths (repository layout, install locations) stay in the logs."""
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "<path>", text)


def is_oip_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def error_body(path: str, code: str, message: str, details: Any = None) -> dict[str, Any]:
    """Task endpoints: {"error": {"code", "message"[, "details"]}}; OIP (/v2) routes: {"error": "message"}."""
    if is_oip_path(path):
        return {"error": message}
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if details is not None:
        body["error"]["details"] = details
    return body

