"""The data plane (KServe's `DataPlane` is the analogy): what a request asks of the service, whatever protocol
brought it. HTTP (service/http, service/oip, the task routes) and gRPC (service/grpc) are thin layers that
turn their wire format into these calls and the answers (or a `ServiceError`) back into theirs.

- which version: `resolve(model, version, family=...)` (404 unknown, 503 not loaded, 422 another family's);
- admission: `check_admission(loaded)` (the batcher's queue and byte bounds, before anything is decoded),
  the work pool's bound (`pool.reserve`) and the request's deadline and disconnect signal (`RequestContext`);
- the run: `decode` (inline when small, else on the work pool), `infer` (the version's dynamic batcher);
- the answers every protocol gives the same: server and model metadata, the repository (index, load,
  unload), which versions statistics cover; who may call what is service/dataplane/access.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from service import __version__
from service.dataplane.context import RequestContext
from service.errors import BadRequest, InvalidInput, LoadFailed, ServiceError
from service.models.version import LoadedVersion, VersionStatus

if TYPE_CHECKING:
    from service.dataplane.workpool import WorkPool
    from service.models.hub import ModelHub
    from service.models.validation import Tensors
    from service.settings import Settings

SERVER_NAME = "research-serving"
PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}
T = TypeVar("T")


def version_number(raw: str | None) -> int | None:
    """A version path segment or field: None or "" -> the served version; otherwise ASCII digits (every
    protocol's rule: REST, gRPC, statistics)."""
    if not raw:
        return None
    # ASCII only: str.isdigit() also accepts "²" or "١", which int() then rejects or reads as another number.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise BadRequest(f"model version must be a positive integer (ASCII digits), got {raw!r}")
    return int(raw)


def server_metadata(settings: Settings) -> dict[str, Any]:
    """OIP server metadata (REST and gRPC)."""
    extensions = ["binary_tensor_data", "parameters", "statistics"]
    if settings.admin_token or not settings.restrict_repository_index:  # the index at least is reachable
        extensions.append("model_repository")
    return {"name": SERVER_NAME, "version": __version__, "extensions": extensions}


class DataPlane:
    def __init__(self, hub: ModelHub, pool: WorkPool, settings: Settings) -> None:
        self.hub = hub
        self.pool = pool
        self.settings = settings

    # ---- which version ----------------------------------------------------------------------------
    def resolve(self, model: str, version: int | None = None, *, family: str | None = None) -> LoadedVersion:
        """The loaded version that answers (`version` None: the served one); with `family`, a model of it."""
        loaded = self.hub.get(model, version)
        if family is not None and loaded.manifest.family != family:
            raise InvalidInput(f"model {loaded.name!r} is a {loaded.manifest.family!r} model, not {family!r}")
        return loaded

    # ---- admission and the run ----------------------------------------------------------------------
    @staticmethod
    def check_admission(loaded: LoadedVersion, graph: str | None = None) -> None:
        """429/503 now when the graph's queue would refuse the request: before its body is decoded."""
        loaded.batchers[graph or loaded.manifest.primary_graph].check_admission()

    async def decode(self, fn: Callable[..., T], *args: Any, inline: bool, ctx: RequestContext, what: str) -> T:
        """`fn(*args)`: on the event loop when `inline` (cheaper than the hop), else on the work pool."""
        if inline:
            return fn(*args)
        return await self.pool.run(fn, *args, ctx=ctx, what=what)

    @staticmethod
    async def infer(loaded: LoadedVersion, inputs: Tensors, ctx: RequestContext, graph: str | None = None
                    ) -> Tensors:
        """The version's graph (default: primary) through its dynamic batcher, under the request's deadline."""
        return await loaded.infer(inputs, ctx, graph)

    # ---- metadata -----------------------------------------------------------------------------------
    def model_metadata(self, loaded: LoadedVersion) -> dict[str, Any]:
        """OIP model metadata of `loaded` (REST answers all of it; gRPC's message has no `parameters`)."""
        graph = loaded.manifest.primary
        serving = sorted(v.version for v in self.hub.serving() if v.name == loaded.name)
        fallback = self.hub.fallback(loaded.name)
        return {
            "name": loaded.name,
            "versions": [str(v) for v in serving],
            "platform": PLATFORMS[graph.format],
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in graph.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in graph.outputs],
            "parameters": {"family": loaded.manifest.family, "task": loaded.manifest.task,
                           "max_batch_size": loaded.manifest.batching.max_batch_size if graph.batchable else 0,
                           **({"fallback": fallback} if fallback else {})},
        }

    def stats_versions(self, model: str | None, version: int | None) -> list[LoadedVersion]:
        """The versions a statistics request covers, sorted: every loaded one, a model's, or one version."""
        if not model:
            if version is not None:
                raise InvalidInput("a version needs a model name")
            versions = self.hub.serving()
        elif version is None:
            self.hub.get(model)  # the error for an unknown or unloaded model
            versions = [v for v in self.hub.serving() if v.name == model]
        else:
            versions = [self.hub.get(model, version)]
        return sorted(versions, key=lambda v: (v.name, v.version))

    # ---- repository ---------------------------------------------------------------------------------
    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        rows = self.hub.index()
        return [r for r in rows if r["state"] == VersionStatus.READY] if ready_only else rows

    async def load(self, model: str, version: int | None) -> LoadedVersion:
        """Load (and serve) a version; a broken artifact is reported as LoadFailed, the old version serves on."""
        try:
            return await self.hub.load(model, version)
        except ServiceError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported to the client, not a server fault
            raise LoadFailed(f"model {model!r} failed to load: {type(exc).__name__}: {exc}") from exc

    async def unload(self, model: str) -> None:
        await self.hub.unload(model)
