from __future__ import annotations

import hmac

from fastapi import Request

from service.errors import Forbidden, NotFound, Unauthorized


def require_admin(request: Request) -> None:
    """Bearer-token guard for admin routes. Without a configured token the routes are disabled (404)."""
    token = request.app.state.settings.admin_token
    if not token:
        raise NotFound("admin API is disabled: set SERVICE_ADMIN_TOKEN to enable it")
    header = request.headers.get("authorization", "")
    scheme, _, supplied = header.partition(" ")
    if scheme.lower() != "bearer" or not supplied:
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    if not hmac.compare_digest(supplied.strip().encode(), token.encode()):
        raise Forbidden("invalid admin token")


def require_index_access(request: Request) -> None:
    """The repository index is readable by anyone (as in Triton, so `tritonclient` works on a default start)
    unless SERVICE_RESTRICT_REPOSITORY_INDEX puts it behind the admin token as well."""
    if request.app.state.settings.restrict_repository_index:
        require_admin(request)
