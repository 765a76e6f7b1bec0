"""What a model family plugs into the service: its routes, and the typed state it prepares per loaded version.

Each family's plug-in is `PLUGIN` in `service/families/<name>/family.py` (listed by `families.registry`). Every
family folder has the same files: `family.py` (the plug-in), `schemas.py` (request and response models),
`routes.py` (module-level handlers on `router`, or `router = None` for a /v2-only family).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

from fastapi import APIRouter

if TYPE_CHECKING:
    from service.models.version import LoadedVersion

StateT = TypeVar("StateT")


class FamilyPlugin(Generic[StateT]):
    """Base class of a family's service plug-in; `StateT` is what `prepare` builds for each loaded version."""

    name: str = ""
    router: APIRouter | None = None

    def prepare(self, version: LoadedVersion) -> StateT:
        """Parse the manifest's `preprocessing` with the family's contract model, load assets
        (`version.asset_path(name)`), register procedures (`version.add_procedure`), and return the
        state the handlers read (`Call.state`). Runs in a worker thread, after the runtimes open and
        before warm-up; an exception fails the load with its message."""
        return None  # type: ignore[return-value]

    def openapi_examples(self, version: LoadedVersion, state: StateT) -> dict[str, Any]:
        """JSON request bodies that `version` (the family's served default) accepts, by route path (POST):
        the OpenAPI document shows them, so that "Try it out" in /docs answers 200. Keep them small."""
        return {}

    def teardown(self, version: LoadedVersion, state: StateT) -> None:
        """Release what `prepare` opened (database connections, files, threads) once `version` is retired:
        unloaded, replaced by another load, or at shutdown. Called once per prepared version, on a worker
        thread, after its queues drained (a request still holding `state` may find it closed); an exception
        is logged, not raised. Default: nothing to release."""

