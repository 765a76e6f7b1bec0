"""Model repository: Triton-style `<model>/<version>/` folders, loaded, warmed up and swapped in place.

A `LoadedVersion` owns its runtimes, one worker thread and one batcher per graph or procedure. The
`ModelHub` serves the latest version of each model (or an explicitly loaded one); a (re)load builds and
warms the new version while the old one keeps serving, swaps, then drains the old one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.batching import DynamicBatcher, RequestContext, split_rows
from service.errors import InvalidInput, NotFound, NotReady
from service.manifest import MANIFEST_FILE, GraphSpec, Manifest, sha256_file
from service.metrics import Metrics
from service.runtimes import Runtime, open_runtime
from service.settings import Settings

if TYPE_CHECKING:
    from service.families.base import Family

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]


def validate_inputs(graph_name: str, spec: GraphSpec, inputs: Tensors) -> Tensors:
    """Check names, dtypes, ranks, fixed dimensions and finiteness against the graph signature."""
    expected = {t.name: t for t in spec.inputs}
    missing = sorted(set(expected) - set(inputs))
    if missing:
        raise InvalidInput(f"missing input tensor(s) {missing} for {graph_name}; expected {sorted(expected)}")
    unexpected = sorted(set(inputs) - set(expected))
    if unexpected:
        raise InvalidInput(f"unexpected input tensor(s) {unexpected} for {graph_name}; expected {sorted(expected)}")
    rows = None
    checked: Tensors = {}
    for name, tensor in expected.items():
        array = inputs[name]
        if array.dtype != tensor.numpy_dtype:
            raise InvalidInput(f"input {name!r} has datatype {array.dtype}, expected {tensor.datatype}")
        if array.ndim != len(tensor.shape):
            raise InvalidInput(f"input {name!r} has shape {list(array.shape)}, expected rank {len(tensor.shape)} "
                               f"shape {tensor.shape} (-1 = any)")
        for axis, (have, want) in enumerate(zip(array.shape, tensor.shape, strict=True)):
            if want >= 0 and have != want:
                raise InvalidInput(f"input {name!r} has shape {list(array.shape)}, expected {tensor.shape} "
                                   f"(axis {axis} must be {want})")
        if spec.batchable:
            if array.shape[0] == 0:
                raise InvalidInput(f"input {name!r} has an empty batch")
            if rows is not None and array.shape[0] != rows:
                raise InvalidInput(f"inputs disagree on batch size: {name!r} has {array.shape[0]}, others {rows}")
            rows = array.shape[0]
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidInput(f"input {name!r} contains NaN or Inf")
        checked[name] = np.ascontiguousarray(array)
    return checked


@dataclass
class _ProcedureSpec:
    fn: Callable[[list[Any]], list[Any]]
    max_batch_size: int
    key: Callable[[Any], Hashable]


class LoadedVersion:
    def __init__(self, manifest: Manifest, path: Path, device: str, settings: Settings, metrics: Metrics) -> None:
        self.manifest = manifest
        self.path = path
        self.device = device
        self.name = manifest.name
        self.version = manifest.version
        self.state: dict[str, Any] = {}
        self.state_dir = settings.state_dir / manifest.name / str(manifest.version)
        self.runtimes: dict[str, Runtime] = {}
        self.batchers: dict[str, DynamicBatcher] = {}
        self._settings = settings
        self._metrics = metrics
        self._procedures: dict[str, _ProcedureSpec] = {}
        # One worker thread per version: its graphs and procedures run one at a time, like one Triton
        # model instance, which is what a single GPU stream or the 2 CPU cores can sustain anyway.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-v{self.version}")

    # ---- loading (worker thread) -------------------------------------------------------------------
    def asset_path(self, asset_name: str) -> Path:
        if asset_name not in self.manifest.assets:
            raise KeyError(f"{self.name} v{self.version} has no asset {asset_name!r}")
        return self.path / self.manifest.assets[asset_name].file

    def open(self, family: Family | None) -> None:
        for asset_name, asset in self.manifest.assets.items():
            actual = sha256_file(self.path / asset.file)
            if actual != asset.sha256:
                raise RuntimeError(f"asset {asset_name!r} checksum mismatch (corrupted artifact)")
        for graph_name, graph in self.manifest.graphs.items():
            self.runtimes[graph_name] = open_runtime(self.path, graph, self.device, self._settings.cpu_threads,
                                                     self._settings.ort_tensorrt)
        if family is not None:
            family.prepare(self)
        self.warm_up()

    def warm_up(self) -> None:
        for runtime in self.runtimes.values():
            runtime.run(runtime.sample_inputs())
        primary = self.runtimes[self.manifest.primary_graph]
        if primary.graph.batchable and self.manifest.batching.max_batch_size > 1:
            primary.run(primary.sample_inputs(self.manifest.batching.max_batch_size))

    def add_procedure(self, name: str, fn: Callable[[list[Any]], list[Any]], *, max_batch_size: int = 1,
                      key: Callable[[Any], Hashable] = lambda _: None) -> None:
        """Register a queue whose batches run `fn(payloads) -> results` on this version's worker thread."""
        if name in self.manifest.graphs:
            raise ValueError(f"procedure name {name!r} clashes with a graph name")
        self._procedures[name] = _ProcedureSpec(fn, max_batch_size, key)

    # ---- serving (event loop) ----------------------------------------------------------------------
    def start(self) -> None:
        limits = self.manifest.batching
        common = dict(model=self.name, version=self.version, executor=self.executor, metrics=self._metrics,
                      max_queue_delay_s=limits.max_queue_delay_ms / 1000, max_queue_size=limits.max_queue_size,
                      default_timeout_s=limits.default_timeout_ms / 1000)
        for graph_name, graph in self.manifest.graphs.items():
            runtime = self.runtimes[graph_name]
            self.batchers[graph_name] = DynamicBatcher(
                queue=graph_name, run_batch=_tensor_batch_runner(runtime),
                max_batch_size=limits.max_batch_size if graph.batchable else 1,
                rows=_rows_of(graph), key=_shape_key, **common,
            )
        for name, proc in self._procedures.items():
            self.batchers[name] = DynamicBatcher(queue=name, run_batch=proc.fn, max_batch_size=proc.max_batch_size,
                                                 key=proc.key, **common)
        for batcher in self.batchers.values():
            batcher.start()

    async def infer(self, inputs: Tensors, ctx: RequestContext | None = None, graph: str | None = None) -> Tensors:
        """Validate, batch and run `inputs` (any number of rows) through a graph; outputs in request order."""
        graph_name = graph or self.manifest.primary_graph
        spec = self.manifest.graphs.get(graph_name)
        if spec is None:
            raise NotFound(f"{self.name} v{self.version} has no graph {graph_name!r}")
        inputs = validate_inputs(f"{self.name} v{self.version} graph {graph_name!r}", spec, inputs)
        batcher = self.batchers[graph_name]
        ctx = ctx or RequestContext()
        rows = next(iter(inputs.values())).shape[0] if spec.batchable else 1
        if rows <= batcher.max_batch_size:
            return await batcher.submit(inputs, ctx)
        chunks = [{k: v[a:b] for k, v in inputs.items()} for a, b in split_rows(rows, batcher.max_batch_size)]
        parts = await asyncio.gather(*(batcher.submit(c, ctx) for c in chunks))
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    async def submit(self, procedure: str, payload: Any, ctx: RequestContext | None = None) -> Any:
        if procedure not in self._procedures:
            raise NotFound(f"{self.name} v{self.version} has no procedure {procedure!r}")
        return await self.batchers[procedure].submit(payload, ctx or RequestContext())

    async def drain(self) -> None:
        await asyncio.gather(*(b.drain() for b in self.batchers.values()))
        self.executor.shutdown(wait=True)


def _rows_of(graph: GraphSpec) -> Callable[[Tensors], int]:
    if not graph.batchable:
        return lambda _: 1
    first = graph.inputs[0].name
    return lambda payload: int(payload[first].shape[0])


def _shape_key(payload: Tensors) -> Hashable:
    return tuple((name, array.shape[1:], array.dtype.str) for name, array in sorted(payload.items()))


def _tensor_batch_runner(runtime: Runtime) -> Callable[[list[Tensors]], list[Tensors]]:
    def run(payloads: list[Tensors]) -> list[Tensors]:
        if len(payloads) == 1:
            return [runtime.run(payloads[0])]
        batched = {name: np.concatenate([p[name] for p in payloads]) for name in payloads[0]}
        outputs = runtime.run(batched)
        first = next(iter(payloads[0]))
        bounds = np.cumsum([0] + [p[first].shape[0] for p in payloads])
        spans = zip(bounds[:-1], bounds[1:], strict=True)
        return [{name: value[a:b] for name, value in outputs.items()} for a, b in spans]

    return run


@dataclass
class VersionState:
    state: str  # READY, LOADING, UNAVAILABLE, UNLOADING
    reason: str = ""


class ModelHub:
    def __init__(self, settings: Settings, metrics: Metrics, families: dict[str, Family], device: str) -> None:
        self.settings = settings
        self.metrics = metrics
        self.families = families
        self.device = device
        self.root = settings.model_repository
        self._serving: dict[str, dict[int, LoadedVersion]] = {}
        self._states: dict[tuple[str, int], VersionState] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._retired: set[asyncio.Task] = set()
        self._wanted: set[str] = set()  # models that should be serving (readiness); no disk scan per probe
        self.startup_complete = False

    # ---- repository on disk -----------------------------------------------------------------------
    def scan(self) -> dict[str, list[int]]:
        """Models and their numeric versions with a manifest; dot-folders (staging) are ignored."""
        found: dict[str, list[int]] = {}
        if not self.root.is_dir():
            return found
        for model_dir in sorted(self.root.iterdir()):
            if not model_dir.is_dir() or model_dir.name.startswith("."):
                continue
            versions = sorted(int(v.name) for v in model_dir.iterdir()
                              if v.is_dir() and v.name.isdigit() and (v / MANIFEST_FILE).is_file())
            if versions:
                found[model_dir.name] = versions
        return found

    def wanted_models(self) -> list[str]:
        names = list(self.scan())
        allow = self.settings.model_allowlist
        return [n for n in names if not allow or n in allow]

    # ---- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self._wanted = set(self.wanted_models())
        for name in sorted(self._wanted):
            try:
                await self.load(name)
            except Exception as exc:  # noqa: BLE001 - one bad model must not stop the others
                log.error("model %s failed to load: %s", name, exc)
        self.startup_complete = True

    async def load(self, name: str, version: int | None = None) -> LoadedVersion:
        """Load `version` (default: latest on disk), warm it up, then make it the served version."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            versions = self.scan().get(name)
            if not versions:
                raise NotFound(f"model {name!r} is not in the repository")
            version = version if version is not None else versions[-1]
            if version not in versions:
                raise NotFound(f"model {name!r} has no version {version} (available: {versions})")
            current = self._serving.get(name, {})
            if version in current:
                return current[version]
            loaded = await self._build(name, version)
            self._serving[name] = {version: loaded}
            self._wanted.add(name)
            for old in current.values():
                self._retire(old)
            return loaded

    async def _build(self, name: str, version: int) -> LoadedVersion:
        self._states[(name, version)] = VersionState("LOADING")
        started = time.perf_counter()
        path = self.root / name / str(version)
        try:
            manifest = Manifest.read(path)
            if manifest.name != name or manifest.version != version:
                raise RuntimeError(f"manifest says {manifest.name} v{manifest.version}, folder is {name}/{version}")
            family = self.families.get(manifest.family)
            loaded = LoadedVersion(manifest, path, self.device, self.settings, self.metrics)
            await asyncio.to_thread(loaded.open, family)
            loaded.start()
        except Exception as exc:
            self._states[(name, version)] = VersionState("UNAVAILABLE", f"{type(exc).__name__}: {exc}")
            self.metrics.model_ready.labels(name, str(version)).set(0)
            raise
        self.metrics.load_duration.labels(name, str(version)).observe(time.perf_counter() - started)
        self.metrics.model_ready.labels(name, str(version)).set(1)
        self._states[(name, version)] = VersionState("READY")
        log.info("loaded %s v%d on %s in %.1fs", name, version, self.device, time.perf_counter() - started)
        return loaded

    def _retire(self, loaded: LoadedVersion) -> None:
        key = (loaded.name, loaded.version)
        self._states[key] = VersionState("UNLOADING")
        self.metrics.model_ready.labels(loaded.name, str(loaded.version)).set(0)

        async def retire() -> None:
            await loaded.drain()
            self._states[key] = VersionState("UNAVAILABLE", "unloaded")

        task = asyncio.get_running_loop().create_task(retire())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def unload(self, name: str) -> None:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            current = self._serving.pop(name, None)
            if current is None:
                raise NotFound(f"model {name!r} is not loaded")
            self._wanted.discard(name)
            for loaded in current.values():
                self._retire(loaded)

    async def shutdown(self) -> None:
        """Finish every accepted request, then stop all workers."""
        for name in list(self._serving):
            for loaded in self._serving.pop(name).values():
                self._retire(loaded)
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)

    # ---- lookup ------------------------------------------------------------------------------------
    def get(self, name: str, version: int | None = None) -> LoadedVersion:
        serving = self._serving.get(name)
        if not serving:
            on_disk = self.scan().get(name)
            if on_disk is None:
                raise NotFound(f"unknown model {name!r}; available: {sorted(self._serving)}")
            states = {v: self._states.get((name, v)) for v in on_disk}
            if any(s is not None and s.state == "LOADING" for s in states.values()):
                raise NotReady(f"model {name!r} is loading")
            reasons = "; ".join(f"v{v}: {s.reason}" for v, s in states.items() if s and s.reason)
            raise NotReady(f"model {name!r} is not loaded" + (f" ({reasons})" if reasons else ""))
        if version is None:
            return serving[max(serving)]
        if version not in serving:
            raise NotFound(f"version {version} of model {name!r} is not loaded (serving: {sorted(serving)})")
        return serving[version]

    def serving(self) -> list[LoadedVersion]:
        return [v for versions in self._serving.values() for v in versions.values()]

    @property
    def ready(self) -> bool:
        if not self.startup_complete:
            return False
        if not self.settings.strict_readiness:
            return True
        return all(name in self._serving for name in self._wanted)

    def index(self) -> list[dict[str, str]]:
        rows = []
        for name, versions in self.scan().items():
            for version in versions:
                state = self._states.get((name, version))
                row = {"name": name, "version": str(version), "state": state.state if state else "UNAVAILABLE",
                       "reason": (state.reason if state else "not loaded")}
                rows.append(row)
        return rows
