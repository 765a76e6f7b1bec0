"""Model repository: Triton-style `<model>/<version>/` folders, loaded, warmed up and swapped in place.

A `LoadedVersion` owns its runtimes, one worker thread and one batcher per graph or procedure. The
`ModelHub` serves the latest version of each model (or an explicitly loaded one); a (re)load builds and
warms the new version while the old one keeps serving, swaps, then drains the old one. Every file of a
version is checked against the manifest's SHA-256 before it is opened. If the latest version fails to load
at start-up, the newest one that loads is served instead (`fallback(name)` says so).

Besides the served version, a model's version policy (`Manifest.version_policy` of its latest version)
may keep older versions loadable: `acquire(name, version)` loads one lazily alongside the served one (e.g.
to decode a codec stream made by it); a later load of a newer version keeps it while the policy does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from families.manifest import MANIFEST_FILE, GraphSpec, Manifest, VersionPolicy, is_version_name, verify_files
from service import gc_tuning
from service.batching import (
    ComputePhases,
    DynamicBatcher,
    QueueBytes,
    QueueStats,
    RequestContext,
    redact_paths,
    split_rows,
)
from service.errors import InvalidInput, NotFound, NotReady, ServiceError
from service.metrics import Metrics
from service.plugin import teardown_version
from service.runtimes import Runtime, open_runtime
from service.settings import Settings

if TYPE_CHECKING:
    from service.plugin import FamilyPlugin

log = logging.getLogger(__name__)

Tensors = dict[str, np.ndarray]

# A version that failed to load lazily is not retried before this many seconds (each try costs a load).
LAZY_RETRY_S = 30.0


class LoadFailed(ServiceError):
    status_code = 400  # as Triton answers a failed load; the previous version keeps serving
    code = "load_failed"


# Inputs above this many bytes get their value check (finiteness, contiguity) on a thread: a 64 MiB float
# tensor takes ~20 ms to scan, far over what the event loop may be blocked for.
INLINE_VALUE_CHECK_BYTES = 256 * 1024
_VALUE_CHECKS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="input-check")


def validate_inputs(graph_name: str, spec: GraphSpec, inputs: Tensors) -> None:
    """Check names, dtypes, ranks and fixed dimensions against the graph signature (cheap: no data read)."""
    expected = {t.name: t for t in spec.inputs}
    missing = sorted(set(expected) - set(inputs))
    if missing:
        raise InvalidInput(f"missing input tensor(s) {missing} for {graph_name}; expected {sorted(expected)}")
    unexpected = sorted(set(inputs) - set(expected))
    if unexpected:
        raise InvalidInput(f"unexpected input tensor(s) {unexpected} for {graph_name}; expected {sorted(expected)}")
    rows = None
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


def check_values(inputs: Tensors) -> Tensors:
    """Finite floats only; C-contiguous copies where needed. Reads every value: see INLINE_VALUE_CHECK_BYTES."""
    checked: Tensors = {}
    for name, array in inputs.items():
        # min/max propagate NaN and show +-Inf without a boolean temporary the size of the input.
        if array.dtype.kind == "f" and array.size and not (np.isfinite(array.min()) and np.isfinite(array.max())):
            raise InvalidInput(f"input {name!r} contains NaN or Inf")
        checked[name] = np.ascontiguousarray(array)
    return checked


@dataclass
class _ProcedureSpec:
    fn: Callable[[list[Any]], list[Any]]
    max_batch_size: int
    key: Callable[[Any], Hashable]


class LoadedVersion:
    def __init__(self, manifest: Manifest, path: Path, device: str, settings: Settings, metrics: Metrics,
                 queue_bytes: QueueBytes | None = None) -> None:
        self.manifest = manifest
        self.path = path
        self.device = device
        self.name = manifest.name
        self.version = manifest.version
        self.prepared: Any = None  # what the family's plug-in `prepare` returned (handlers: `Call.state`)
        self.state_dir = settings.state_dir / manifest.name / str(manifest.version)
        self.runtimes: dict[str, Runtime] = {}  # instance 0 of each graph (procedures use these)
        self.instances: dict[str, list[Runtime]] = {}  # every instance of each graph, own session each
        self.instance_count = instance_count_for(manifest, settings)
        self.batchers: dict[str, DynamicBatcher] = {}
        self._settings = settings
        self._metrics = metrics
        self._procedures: dict[str, _ProcedureSpec] = {}
        self._queue_bytes = queue_bytes or QueueBytes(settings.max_queued_bytes)
        # One worker thread per model instance (default 1: graphs and procedures run one at a time, which is
        # what one GPU stream or 2 CPU cores sustain). With N, a graph runs up to N batches at once, each on
        # its own session, so batch k+1 computes while batch k is split and answered.
        self.executor = ThreadPoolExecutor(max_workers=self.instance_count,
                                           thread_name_prefix=f"{self.name}-v{self.version}")

    @property
    def settings(self) -> Settings:
        """The service's settings (a plug-in's `prepare` reads its family's knobs, e.g. quality fractions)."""
        return self._settings

    @property
    def metrics(self) -> Metrics:
        """The service's metrics (a plug-in's `prepare` builds its quality recorders on `metrics.quality`)."""
        return self._metrics

    # ---- loading (worker thread) -------------------------------------------------------------------
    def asset_path(self, asset_name: str) -> Path:
        if asset_name not in self.manifest.assets:
            raise KeyError(f"{self.name} v{self.version} has no asset {asset_name!r}")
        return self.path / self.manifest.assets[asset_name].file

    def open(self, family: FamilyPlugin | None) -> None:
        if self.manifest.schema_version < 2:
            log.warning("%s v%d: manifest schema %d has no graph checksums; only assets are verified "
                        "(re-export to verify every file)", self.name, self.version, self.manifest.schema_version)
        verify_files(self.path, self.manifest)
        threads = self._settings.cpu_threads
        if threads == 0 and self.instance_count > 1 and self.device == "cpu":
            threads = max(1, (os.cpu_count() or 1) // self.instance_count)  # N sessions must not oversubscribe
        for graph_name, graph in self.manifest.graphs.items():
            self.instances[graph_name] = [open_runtime(self.path, graph, self.device, threads,
                                                       self._settings.ort_tensorrt, self._settings.runtime)
                                          for _ in range(self.instance_count)]
            self.runtimes[graph_name] = self.instances[graph_name][0]
        if family is not None:
            self.prepared = family.prepare(self)
        self.warm_up()

    def warm_up(self) -> None:
        for runtimes in self.instances.values():
            for runtime in runtimes:
                runtime.run(runtime.sample_inputs())
        for primary in self.instances[self.manifest.primary_graph]:
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
                      default_timeout_s=limits.default_timeout_ms / 1000, delay_policy=limits.delay_policy,
                      queue_bytes=self._queue_bytes)
        for graph_name, graph in self.manifest.graphs.items():
            phases = [ComputePhases() for _ in self.instances[graph_name]]
            self.batchers[graph_name] = DynamicBatcher(
                queue=graph_name, run_batch=[_tensor_batch_runner(runtime, ph)
                                             for runtime, ph in zip(self.instances[graph_name], phases, strict=True)],
                max_batch_size=limits.max_batch_size if graph.batchable else 1,
                rows=_rows_of(graph), key=_shape_key, phases=phases, cost=_input_bytes,
                inline_below_s=self._settings.inline_compute_ms / 1000, **common,
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
        validate_inputs(f"{self.name} v{self.version} graph {graph_name!r}", spec, inputs)
        if sum(a.nbytes for a in inputs.values()) > INLINE_VALUE_CHECK_BYTES:
            inputs = await asyncio.get_running_loop().run_in_executor(_VALUE_CHECKS, check_values, inputs)
        else:
            inputs = check_values(inputs)
        batcher = self.batchers[graph_name]
        ctx = ctx or RequestContext()
        rows = next(iter(inputs.values())).shape[0] if spec.batchable else 1
        if rows <= batcher.max_batch_size:
            return await batcher.submit(inputs, ctx)
        chunks = [{k: v[a:b] for k, v in inputs.items()} for a, b in split_rows(rows, batcher.max_batch_size)]
        parts = await batcher.submit_all(chunks, ctx)  # every chunk admitted, or none
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    async def submit(self, procedure: str, payload: Any, ctx: RequestContext | None = None) -> Any:
        if procedure not in self._procedures:
            raise NotFound(f"{self.name} v{self.version} has no procedure {procedure!r}")
        return await self.batchers[procedure].submit(payload, ctx or RequestContext())

    async def drain(self) -> None:
        await asyncio.gather(*(b.drain() for b in self.batchers.values()))
        self.executor.shutdown(wait=True)

    def stats(self) -> QueueStats:
        """Triton-style statistics of this version: every graph and procedure queue together."""
        return QueueStats.combine(b.stats for b in self.batchers.values())


def instance_count_for(manifest: Manifest, settings: Settings) -> int:
    """Model instances of `manifest`'s model: SERVICE_INSTANCES ("N" or "model=N,...") over the manifest."""
    override = parse_instances(settings.instances)
    count = override.get(manifest.name, override.get("*", 0))
    return count or manifest.batching.instance_count


def parse_instances(text: str) -> dict[str, int]:
    """"2" -> {"*": 2}; "tiny=2,traffic=1" -> {"tiny": 2, "traffic": 1}; ValueError naming the setting."""
    found: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, count = part.rpartition("=")
        if not count.isdigit() or not 0 <= int(count) <= 16:
            raise ValueError(f"SERVICE_INSTANCES: {part!r} must be N or model=N with 0 <= N <= 16")
        found[name.strip() or "*"] = int(count)
    return found


def _rows_of(graph: GraphSpec) -> Callable[[Tensors], int]:
    if not graph.batchable:
        return lambda _: 1
    first = graph.inputs[0].name
    return lambda payload: int(payload[first].shape[0])


def _input_bytes(payload: Tensors) -> int:
    return sum(array.nbytes for array in payload.values())


def _shape_key(payload: Tensors) -> Hashable:
    return tuple((name, array.shape[1:], array.dtype.str) for name, array in sorted(payload.items()))


def _tensor_batch_runner(runtime: Runtime, phases: ComputePhases) -> Callable[[list[Tensors]], list[Tensors]]:
    """Concatenate the requests, run once, split the outputs; times the three phases into `phases`."""
    def run(payloads: list[Tensors]) -> list[Tensors]:
        phases.input_s = phases.output_s = 0.0
        if len(payloads) == 1:
            return [runtime.run(payloads[0])]
        started = time.perf_counter()
        batched = {name: np.concatenate([p[name] for p in payloads]) for name in payloads[0]}
        phases.input_s = time.perf_counter() - started
        outputs = runtime.run(batched)
        started = time.perf_counter()
        first = next(iter(payloads[0]))
        bounds = np.cumsum([0] + [p[first].shape[0] for p in payloads])
        spans = zip(bounds[:-1], bounds[1:], strict=True)
        results = [{name: value[a:b] for name, value in outputs.items()} for a, b in spans]
        phases.output_s = time.perf_counter() - started
        return results

    return run


class VersionStatus(StrEnum):
    """A model version's state, as the OIP repository index names it."""

    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class VersionState:
    state: VersionStatus
    reason: str = ""


class ModelHub:
    def __init__(self, settings: Settings, metrics: Metrics, families: dict[str, FamilyPlugin], device: str) -> None:
        self.settings = settings
        self.metrics = metrics
        self.families = families
        self.device = device
        self.root = settings.model_repository
        self._serving: dict[str, dict[int, LoadedVersion]] = {}  # the served version of each model
        self._extra: dict[str, dict[int, LoadedVersion]] = {}  # older versions kept by the version policy
        self._states: dict[tuple[str, int], VersionState] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._retired: set[asyncio.Task] = set()
        self._acquiring: dict[tuple[str, int], asyncio.Task] = {}
        self._lazy_failed_at: dict[tuple[str, int], float] = {}
        self._fallback: dict[str, str] = {}
        self._manifest_cache: dict[tuple[str, int], tuple[int, Manifest | None]] = {}
        self._warned: set[str] = set()
        self._wanted: set[str] = set()  # models that should be serving (readiness); no disk scan per probe
        # The repository as the last scan (start, load, unload, index) saw it: request paths look names up
        # here, so an unknown name (e.g. from an untrusted codec stream header) costs a dict lookup, not a scan.
        self._on_disk: dict[str, list[int]] = {}
        self._closing = False
        self.startup_complete = False
        # One byte bound over every model's queues.
        self.queue_bytes = QueueBytes(settings.max_queued_bytes, metrics.queued_bytes)

    # ---- repository on disk -----------------------------------------------------------------------
    def scan(self) -> dict[str, list[int]]:
        """Models and their numeric versions with a manifest; dot-folders (staging) are ignored, other
        folders that are not a version number are skipped with a warning."""
        found: dict[str, list[int]] = {}
        try:
            model_dirs = sorted(self.root.iterdir()) if self.root.is_dir() else []
        except OSError as exc:
            self._warn_once("root", "model repository is unreadable: %s", exc)
            return found
        for model_dir in model_dirs:
            if model_dir.name.startswith("."):
                continue
            versions = self._versions_on_disk(model_dir)
            if versions:
                found[model_dir.name] = versions
        self._on_disk = found
        return found

    def _versions_on_disk(self, model_dir: Path) -> list[int]:
        try:
            if not model_dir.is_dir():
                return []
            entries = list(model_dir.iterdir())
        except OSError as exc:
            self._warn_once(model_dir.name, "model folder %r is unreadable: %s", model_dir.name, exc)
            return []
        versions = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if not is_version_name(entry.name):
                if entry.is_dir():
                    self._warn_once(f"{model_dir.name}/{entry.name}", "skipping folder %r of model %r: version "
                                    "folders are named by ASCII digits (1, 2, ...)", entry.name, model_dir.name)
                continue
            try:
                if entry.is_dir() and (entry / MANIFEST_FILE).is_file():
                    versions.append(int(entry.name))
            except OSError as exc:
                self._warn_once(f"{model_dir.name}/{entry.name}", "version folder %s/%s is unreadable: %s",
                                model_dir.name, entry.name, exc)
        return sorted(versions)

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        # scan() runs on lookups of unloaded models and on the index: warn once per folder, not per request.
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def manifests(self, name: str) -> dict[int, Manifest]:
        """Every readable manifest of `name` the last scan found, by version (cached; versions are immutable)."""
        found = {}
        for version in self._on_disk.get(name, []):
            manifest = self._manifest(name, version)
            if manifest is not None:
                found[version] = manifest
        return found

    def _manifest(self, name: str, version: int) -> Manifest | None:
        path = self.root / name / str(version)
        try:
            stamp = (path / MANIFEST_FILE).stat().st_mtime_ns
        except OSError:
            return None
        cached = self._manifest_cache.get((name, version))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        manifest: Manifest | None
        try:
            manifest = Manifest.read(path)
            if manifest.name != name or manifest.version != version:
                raise ValueError(f"manifest says {manifest.name} v{manifest.version}")
        except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            log.warning("manifest of %s v%d is unreadable: %s", name, version, exc)
            manifest = None
        self._manifest_cache[(name, version)] = (stamp, manifest)
        return manifest

    def version_policy(self, name: str) -> VersionPolicy:
        """The policy of the newest readable manifest of `name` (the default when there is none)."""
        manifests = self.manifests(name)
        return manifests[max(manifests)].version_policy if manifests else VersionPolicy()

    def _policy_keeps(self, name: str, version: int) -> bool:
        return self.version_policy(name).keeps(version, self._versions_on_disk(self.root / name))

    def wanted_models(self) -> list[str]:
        names = list(self.scan())
        allow = self.settings.model_allowlist
        return [n for n in names if not allow or n in allow]

    # ---- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self._wanted = set(self.wanted_models())
        for name in sorted(self._wanted):
            await self._start_model(name)
        self.startup_complete = True

    async def _start_model(self, name: str) -> None:
        """Serve the latest version, or else the newest one that loads (a fallback, said in metadata)."""
        versions = self.scan().get(name, [])
        failed: list[str] = []
        for version in reversed(versions):
            try:
                await self.load(name, version)
            except Exception as exc:  # noqa: BLE001 - one bad version must not stop the others
                failed.append(exc.message if isinstance(exc, ServiceError) else redact_paths(str(exc)))
                continue
            if failed:
                self._fallback[name] = f"serving version {version} because newer versions failed to load: " \
                                       + "; ".join(failed)
                self.metrics.model_fallback.labels(name).set(1)
                log.error("model %s: %s", name, self._fallback[name])
            return
        log.error("model %s is not served: no version loads", name)

    async def load(self, name: str, version: int | None = None) -> LoadedVersion:
        """Load `version` (default: latest on disk), warm it up, then make it the served version.

        Raises LoadFailed (the message names no filesystem path) when the version does not load."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            versions = self.scan().get(name)
            if not versions:
                raise NotFound(f"model {name!r} is not in the repository")
            version = version if version is not None else versions[-1]
            if version not in versions:
                raise NotFound(f"model {name!r} has no version {version} (available: {versions})")
            current = self._serving.get(name, {})
            kept = self._extra.get(name, {})
            if version in current:
                loaded = current[version]
            elif version in kept:  # already loaded alongside: promote it
                loaded = kept.pop(version)
            else:
                loaded = await self._build(name, version)
            self._serving[name] = {version: loaded}
            self._wanted.add(name)
            self._fallback.pop(name, None)  # an explicit (or the first) load is what the operator wants
            self.metrics.model_fallback.labels(name).set(0)
            for old in current.values():
                if old is loaded:
                    continue
                if old.version < version and self._policy_keeps(name, old.version):
                    kept[old.version] = old  # streams of the previous version still decode, no reload
                else:
                    self._retire(old)
            self._extra[name] = kept
            self._prune_extras(name)
            return loaded

    def _prune_extras(self, name: str) -> None:
        kept = self._extra.get(name, {})
        for version in [v for v in kept if not self._policy_keeps(name, v)]:
            self._retire(kept.pop(version))

    async def _build(self, name: str, version: int) -> LoadedVersion:
        self._states[(name, version)] = VersionState(VersionStatus.LOADING)
        started = time.perf_counter()
        path = self.root / name / str(version)
        loaded: LoadedVersion | None = None
        family: FamilyPlugin | None = None
        try:
            manifest = Manifest.read(path)
            if manifest.name != name or manifest.version != version:
                raise RuntimeError(f"manifest says {manifest.name} v{manifest.version}, folder is {name}/{version}")
            family = self.families.get(manifest.family)
            loaded = LoadedVersion(manifest, path, self.device, self.settings, self.metrics, self.queue_bytes)
            await asyncio.to_thread(loaded.open, family)
            loaded.start()
        except Exception as exc:
            # The full message (paths included) goes to the log; clients get it without paths.
            log.error("model %s v%d failed to load from %s: %s: %s", name, version, path, type(exc).__name__, exc)
            reason = redact_paths(f"{type(exc).__name__}: {exc}")
            self._states[(name, version)] = VersionState(VersionStatus.UNAVAILABLE, reason)
            self.metrics.model_ready.labels(name, str(version)).set(0)
            self.metrics.load_failures.labels(name, str(version)).inc()
            if loaded is not None:  # e.g. warm-up failed after `prepare` opened the family's resources
                if loaded.prepared is not None:
                    await teardown_version(family, loaded)
                loaded.executor.shutdown(wait=False)
            raise LoadFailed(f"model {name!r} version {version} failed to load: {reason}") from exc
        if self.settings.gc_freeze:
            gc_tuning.freeze(f"loading {name} v{version}")  # keep its sessions out of later collections
        self.metrics.load_duration.labels(name, str(version)).observe(time.perf_counter() - started)
        self.metrics.model_ready.labels(name, str(version)).set(1)
        self._states[(name, version)] = VersionState(VersionStatus.READY)
        log.info("loaded %s v%d on %s in %.1fs", name, version, self.device, time.perf_counter() - started)
        return loaded

    def _retire(self, loaded: LoadedVersion) -> None:
        key = (loaded.name, loaded.version)
        self._states[key] = VersionState(VersionStatus.UNLOADING)
        self.metrics.model_ready.labels(loaded.name, str(loaded.version)).set(0)

        async def retire() -> None:
            await loaded.drain()
            # What the plug-in opened for the version (e.g. weld's gallery connections) is released with it.
            await teardown_version(self.families.get(loaded.manifest.family), loaded)
            self._states[key] = VersionState(VersionStatus.UNAVAILABLE, "unloaded")

        task = asyncio.get_running_loop().create_task(retire())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def unload(self, name: str) -> None:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            self.scan()
            current = self._serving.pop(name, None)
            if current is None:
                raise NotFound(f"model {name!r} is not loaded")
            self._wanted.discard(name)
            self._fallback.pop(name, None)
            for loaded in [*current.values(), *self._extra.pop(name, {}).values()]:
                self._retire(loaded)

    async def shutdown(self) -> None:
        """Finish every accepted request, then stop all workers."""
        self._closing = True
        if self._acquiring:  # lazy loads in flight register (or retire) their version before we drain
            await asyncio.gather(*self._acquiring.values(), return_exceptions=True)
        for table in (self._serving, self._extra):
            for name in list(table):
                for loaded in table.pop(name).values():
                    self._retire(loaded)
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)

    # ---- versions alongside the served one ----------------------------------------------------------
    async def acquire(self, name: str, version: int) -> LoadedVersion:
        """Version `version` of a served model, loaded lazily alongside the served one when its version
        policy keeps it. NotFound when the policy (or the disk) has no such version; NotReady when it fails
        to load (retried after LAZY_RETRY_S)."""
        served = self.get(name)
        if version == served.version:
            return served
        kept = self._extra.get(name, {}).get(version)
        if kept is not None:
            return kept
        self._check_policy(name, version)
        key = (name, version)
        task = self._acquiring.get(key)
        if task is None:
            failed_at = self._lazy_failed_at.get(key)
            if failed_at is not None and time.monotonic() - failed_at < LAZY_RETRY_S:
                state = self._states.get(key)
                raise NotReady(f"version {version} of model {name!r} failed to load"
                               + (f" ({state.reason})" if state and state.reason else ""),
                               retry_after_s=int(LAZY_RETRY_S))
            task = asyncio.get_running_loop().create_task(self._load_alongside(name, version))
            self._acquiring[key] = task
            task.add_done_callback(lambda _: self._acquiring.pop(key, None))
        # Shielded: one waiting request that goes away must not cancel the load the others share.
        return await asyncio.shield(task)

    def _check_policy(self, name: str, version: int) -> None:
        on_disk = self._versions_on_disk(self.root / name)
        if version not in on_disk:
            raise NotFound(f"model {name!r} has no version {version} (on disk: {on_disk})")
        policy = self.version_policy(name)
        if not policy.keeps(version, on_disk):
            raise NotFound(f"version {version} of model {name!r} is not kept by its version policy "
                           f"({policy.model_dump()})")

    async def _load_alongside(self, name: str, version: int) -> LoadedVersion:
        async with self._locks.setdefault(name, asyncio.Lock()):  # after any load/unload of this model
            if self._closing or name not in self._serving:
                raise NotReady(f"model {name!r} is not loaded")
            if version in self._serving[name]:
                return self._serving[name][version]
            kept = self._extra.setdefault(name, {})
            if version in kept:
                return kept[version]
            self._check_policy(name, version)
            try:
                loaded = await self._build(name, version)
            except LoadFailed as exc:
                self._lazy_failed_at[(name, version)] = time.monotonic()
                raise NotReady(exc.message, retry_after_s=int(LAZY_RETRY_S)) from None
            self._lazy_failed_at.pop((name, version), None)
            kept[version] = loaded
            log.info("%s v%d loaded alongside v%d (version policy)", name, version, max(self._serving[name]))
            return loaded

    # ---- lookup ------------------------------------------------------------------------------------
    def get(self, name: str, version: int | None = None) -> LoadedVersion:
        serving = self._serving.get(name)
        if not serving:
            on_disk = self._on_disk.get(name)
            if on_disk is None:
                raise NotFound(f"unknown model {name!r}; available: {sorted(self._serving)}")
            states = {v: self._states.get((name, v)) for v in on_disk}
            if any(s is not None and s.state is VersionStatus.LOADING for s in states.values()):
                raise NotReady(f"model {name!r} is loading")
            reasons = "; ".join(f"v{v}: {s.reason}" for v, s in states.items() if s and s.reason)
            raise NotReady(f"model {name!r} is not loaded" + (f" ({reasons})" if reasons else ""))
        if version is None:
            return serving[max(serving)]
        if version in serving:
            return serving[version]
        kept = self._extra.get(name, {})
        if version in kept:
            return kept[version]
        raise NotFound(f"version {version} of model {name!r} is not loaded (serving: {sorted({*serving, *kept})})")

    def serving(self) -> list[LoadedVersion]:
        """Every loaded version: the served one of each model and those loaded alongside."""
        return [v for table in (self._serving, self._extra) for versions in table.values() for v in versions.values()]

    def fallback(self, name: str) -> str | None:
        """Why an older version is served when the latest failed to load at start-up (None: it did not)."""
        return self._fallback.get(name)

    def version_states(self) -> dict[str, dict[int, VersionState]]:
        """Read-only view from memory (no disk scan; the landing page reads it per request): every version this
        hub has tried to load, by model, and each model to load that has no version tried yet (empty)."""
        found: dict[str, dict[int, VersionState]] = {name: {} for name in self._wanted}
        for (name, version), state in self._states.items():
            found.setdefault(name, {})[version] = state
        return found

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
                status = state.state if state else VersionStatus.UNAVAILABLE
                row = {"name": name, "version": str(version), "state": status.value,
                       "reason": (state.reason if state else "not loaded")}
                rows.append(row)
        return rows
