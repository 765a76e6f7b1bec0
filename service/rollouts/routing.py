"""The two hooks the request path calls (service/http/request.py, service/http/call.py): cheap when no rollout
runs (one attribute read)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.errors import ServiceError

if TYPE_CHECKING:
    from starlette.requests import Request

    from service.models.version import LoadedVersion


def route_request(request: Request, loaded: LoadedVersion, explicit: bool) -> LoadedVersion:
    """The version that answers: `loaded` (the served one, or the one `?version=` named) unless a rollout
    sends this request to its candidate. Records the answering version for metrics and `X-Model-Version`."""
    controller = getattr(request.app.state, "rollouts", None)
    if controller is not None and (controller.rollouts or "rollout_replay" in request.scope.get("state", ())):
        loaded = controller.route(request, loaded, explicit)
    request.state.model_name = loaded.name
    request.state.model_version = str(loaded.version)
    return loaded


def follow_swap(request: Request, loaded: LoadedVersion, explicit: bool) -> LoadedVersion:
    """`loaded`, or the served version when `loaded` was swapped out (a promotion, a reload, the end of a
    rollout) while the request was read and preprocessed: its batcher no longer accepts work, and the answer
    must not be a 503. A request that named its version (or a shadow copy) keeps it and fails as before."""
    hub = request.app.state.hub
    try:
        if hub.get(loaded.name, loaded.version) is loaded:
            return loaded
    except ServiceError:
        pass
    if explicit or "rollout_replay" in request.scope.get("state", ()):
        return loaded
    try:
        current = hub.get(loaded.name)
    except ServiceError:
        return loaded
    request.state.model_version = str(current.version)
    return current
