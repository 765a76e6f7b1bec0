"""Admin routes of rollouts (bearer token): start or change, read the comparison, promote, end."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from service.errors import NotFound
from service.http.auth import require_admin
from service.http.openapi import json_body_openapi
from service.http.request import hub_of, parse_json_body
from service.rollouts.controller import RolloutController
from service.rollouts.state import RolloutBody

router = APIRouter(prefix="/admin/rollouts", tags=["Rollouts"], dependencies=[Depends(require_admin)])


def controller_of(request: Request) -> RolloutController:
    return request.app.state.rollouts


@router.put("/{model}", openapi_extra=json_body_openapi(RolloutBody))
async def start_rollout(model: str, request: Request) -> dict[str, Any]:
    """Start (or change the mode / percent / policy of) a rollout of `candidate` beside the served version.
    The candidate is loaded and warmed up first if it is not loaded (400 when it fails to load; the served
    version keeps serving). Shadow: the served version answers, a copy runs on the candidate off the response
    path. Canary: `percent` of the requests are answered by the candidate (sticky per `X-Rollout-Key`)."""
    body = await parse_json_body(request, RolloutBody, "rollout request")
    controller = controller_of(request)
    rollout = await controller.start(hub_of(request), model, body)
    return await controller.report(rollout)


@router.get("/{model}")
async def read_rollout(model: str, request: Request) -> dict[str, Any]:
    """The running rollout and its live comparison per version (or the last one's final report)."""
    controller = controller_of(request)
    rollout = controller.rollouts.get(model)
    if rollout is not None:
        return await controller.report(rollout)
    if model in controller.ended:
        return controller.ended[model]
    raise NotFound(f"model {model!r} has no rollout")


@router.post("/{model}/promote")
async def promote_rollout(model: str, request: Request) -> dict[str, Any]:
    """The candidate becomes the served version (already warm: swapped at once; the old one drains)."""
    return await controller_of(request).promote(hub_of(request), model)


@router.delete("/{model}")
async def end_rollout(model: str, request: Request) -> dict[str, Any]:
    """End the rollout: the served version answers everything; a candidate loaded for it is unloaded."""
    return await controller_of(request).end(hub_of(request), model)
