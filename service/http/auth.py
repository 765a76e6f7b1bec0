"""The admin and repository-index guards as FastAPI dependencies (the rule: service/dataplane/access.py)."""

from __future__ import annotations

from fastapi import Request

from service.dataplane.access import check_admin, check_index_access


def require_admin(request: Request) -> None:
    """Bearer-token guard for admin routes. Without a configured token the routes are disabled (404)."""
    check_admin(request.app.state.settings, request.headers.get("authorization", ""))


def require_index_access(request: Request) -> None:
    """The repository index: open unless SERVICE_RESTRICT_REPOSITORY_INDEX (then as require_admin)."""
    check_index_access(request.app.state.settings, request.headers.get("authorization", ""))
