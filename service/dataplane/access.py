"""Who may call what, for every protocol: the admin bearer token (`SERVICE_ADMIN_TOKEN`) and the repository
index's openness (`SERVICE_RESTRICT_REPOSITORY_INDEX`). HTTP passes its Authorization header, gRPC its
`authorization` metadata."""

from __future__ import annotations

import hmac

from service.errors import Forbidden, NotFound, Unauthorized
from service.settings import Settings


def check_admin(settings: Settings, authorization: str, where: str = "Authorization") -> None:
    """Admin calls need `Bearer <token>`; without a configured token the admin API is disabled (404)."""
    token = settings.admin_token
    if not token:
        raise NotFound("admin API is disabled: set SERVICE_ADMIN_TOKEN to enable it")
    scheme, _, supplied = authorization.partition(" ")
    if scheme.lower() != "bearer" or not supplied:
        raise Unauthorized(f"missing bearer token ({where}: Bearer <token>)")
    if not hmac.compare_digest(supplied.strip().encode(), token.encode()):
        raise Forbidden("invalid admin token")


def check_index_access(settings: Settings, authorization: str, where: str = "Authorization") -> None:
    """The repository index is readable by anyone (as in Triton, so `tritonclient` works on a default start)
    unless SERVICE_RESTRICT_REPOSITORY_INDEX puts it behind the admin token as well."""
    if settings.restrict_repository_index:
        check_admin(settings, authorization, where)
