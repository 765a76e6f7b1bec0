"""What a model family plugs into the service: what it declares (`FamilySpec`), its routes, and the typed state
it prepares per loaded version (`FamilyPlugin`).

Each family's declaration is `SPEC` in `service/families/<name>/__init__.py` (light: importing it loads no model
code, so the Ray ingress and the settings read it cheaply) and its plug-in is `PLUGIN` in
`service/families/<name>/family.py`, whose `spec` is that declaration; both are found through `families.registry`.
The platform (app description, OpenAPI, rollouts, metrics, settings) and deploy/ read families only from these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from fastapi import APIRouter

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from service.models.version import LoadedVersion
    from service.settings import FamilySettings

StateT = TypeVar("StateT")

# (sample name, label value that splits it) -> the sample's value summed over the rollout, of one version
RolloutTotals = Mapping[tuple[str, str], float]


@dataclass(frozen=True)
class RolloutQuality:
    """How a rollout compares a family's versions from its quality series (service/rollouts/quality.py):
    `samples`: sample name -> the label that splits it further (or None); `only`: label values a sample must
    have where it has the label; `figures(totals)`: the family's figures, with `figure` (the one the automatic
    policy compares; lower is better unless `higher_is_better`) and `scored` (how many samples it rests on)."""

    samples: Mapping[str, str | None]
    figures: Callable[[RolloutTotals], dict[str, Any]]
    only: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FamilySpec:
    """What a family declares to the platform and to deploy/, readable without importing its model code.

    - `route_prefix`: the first path segment of its task routes ("/name"), None for a /v2-only family;
    - `summary`: its phrase in the service's description (OpenAPI, /docs);
    - `non_idempotent_routes`: path prefixes of writes never re-sent to another replica (deploy/ray's ingress);
    - `fanout_routes`: writes every version of a rollout must see (the candidate gets a copy);
    - `version_pinned_routes`: requests tied to the version that made their input: a rollout never reroutes them;
    - `settings`: its settings model (`SERVICE_<F>_*`, service/settings.py `FamilySettings`);
    - `metrics`: builds its own Prometheus series on a registry (once per app; `Metrics.family`);
    - `rollout_quality`: how a rollout compares two of its versions;
    - `oip_example_first`: its served model is the preferred OIP example of the OpenAPI document.
    """

    name: str
    route_prefix: str | None = None
    summary: str = ""
    non_idempotent_routes: tuple[str, ...] = ()
    fanout_routes: frozenset[str] = frozenset()
    version_pinned_routes: frozenset[str] = frozenset()
    settings: type[FamilySettings] | None = None
    metrics: Callable[[CollectorRegistry], Any] | None = None
    rollout_quality: RolloutQuality | None = None
    oip_example_first: bool = False


class FamilyPlugin(Generic[StateT]):
    """Base class of a family's service plug-in; `StateT` is what `prepare` builds for each loaded version."""

    spec: FamilySpec = FamilySpec("")
    router: APIRouter | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def settings_of(self, version: LoadedVersion) -> Any:
        """The family's settings (`spec.settings`) in the app that loads `version`."""
        if self.spec.settings is None:
            raise LookupError(f"family {self.name!r} declares no settings")
        return version.settings.family(self.spec.settings)

    def metrics_of(self, version: LoadedVersion) -> Any:
        """The family's own series (`spec.metrics`) in the app that loads `version`."""
        if self.spec.metrics is None:
            raise LookupError(f"family {self.name!r} declares no metrics")
        return version.metrics.family(self.name, self.spec.metrics)

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

