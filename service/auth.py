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
