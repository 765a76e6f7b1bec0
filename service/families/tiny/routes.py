"""The tiny family has no task routes: it is reached through /v2/models/tiny/infer only."""

from __future__ import annotations

from fastapi import APIRouter

router: APIRouter | None = None
