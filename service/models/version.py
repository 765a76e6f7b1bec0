"""One loaded model version: its runtimes (one per graph and model instance), its worker threads, one
batcher per graph or procedure, and what its family prepared (`prepared`). Every file of the version is
checked against the manifest's SHA-256 before it is opened."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from families.manifest import Manifest, verify_files
from service.batching.batcher import DynamicBatcher
from service.batching.items import Waiting
from service.batching.queue_bytes import QueueBytes
from service.batching.stats import ComputePhases, QueueStats
from service.errors import NotFound
from service.metrics import Metrics, PrometheusBatchObserver
from service.models.instances import instance_count_for
from service.models.tensor_batch import input_bytes, rows_of, shape_key, split_rows, tensor_batch_runner
from service.models.validation import INLINE_VALUE_CHECK_BYTES, VALUE_CHECKS, Tensors, check_values, validate_inputs
from service.runtimes import Runtime, open_runtime
from service.settings import Settings

log = logging.getLogger(__name__)

# What a family plugs in at load time (its plug-in's `prepare`): runs on a worker thread after the runtimes
# open and before warm-up, and returns the state handlers read (`Call.state`).
Prepare = Callable[["LoadedVersion"], Any]


class Family(Protocol):
    """What the hub calls of a family's plug-in (service.plugin.FamilyPlugin) over a version's life."""

    name: str

    def prepare(self, version: LoadedVersion) -> Any: ...

    def teardown(self, version: LoadedVersion, state: Any) -> None: ...


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

    def open(self, prepare: Prepare | None) -> None:
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
        if prepare is not None:
            self.prepared = prepare(self)
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
        common = dict(model=self.name, version=self.version, executor=self.executor,
                      max_queue_delay_s=limits.max_queue_delay_ms / 1000, max_queue_size=limits.max_queue_size,
                      default_timeout_s=limits.default_timeout_ms / 1000, delay_policy=limits.delay_policy,
                      queue_bytes=self._queue_bytes)
        for graph_name, graph in self.manifest.graphs.items():
            phases = [ComputePhases() for _ in self.instances[graph_name]]
            self.batchers[graph_name] = DynamicBatcher(
                queue=graph_name, run_batch=[tensor_batch_runner(runtime, ph)
                                             for runtime, ph in zip(self.instances[graph_name], phases, strict=True)],
                max_batch_size=limits.max_batch_size if graph.batchable else 1,
                rows=rows_of(graph), key=shape_key, phases=phases, cost=input_bytes,
                inline_below_s=self._settings.inline_compute_ms / 1000, observer=self._observer(graph_name), **common,
            )
        for name, proc in self._procedures.items():
            self.batchers[name] = DynamicBatcher(queue=name, run_batch=proc.fn, max_batch_size=proc.max_batch_size,
                                                 key=proc.key, observer=self._observer(name), **common)
        for batcher in self.batchers.values():
            batcher.start()

    def _observer(self, queue: str) -> PrometheusBatchObserver:
        return PrometheusBatchObserver(self._metrics, self.name, self.version, queue)

    async def infer(self, inputs: Tensors, ctx: Waiting | None = None, graph: str | None = None) -> Tensors:
        """Validate, batch and run `inputs` (any number of rows) through a graph; outputs in request order."""
        graph_name = graph or self.manifest.primary_graph
        spec = self.manifest.graphs.get(graph_name)
        if spec is None:
            raise NotFound(f"{self.name} v{self.version} has no graph {graph_name!r}")
        validate_inputs(f"{self.name} v{self.version} graph {graph_name!r}", spec, inputs)
        if sum(a.nbytes for a in inputs.values()) > INLINE_VALUE_CHECK_BYTES:
            inputs = await asyncio.get_running_loop().run_in_executor(VALUE_CHECKS, check_values, inputs)
        else:
            inputs = check_values(inputs)
        batcher = self.batchers[graph_name]
        rows = next(iter(inputs.values())).shape[0] if spec.batchable else 1
        if rows <= batcher.max_batch_size:
            return await batcher.submit(inputs, ctx)
        chunks = [{k: v[a:b] for k, v in inputs.items()} for a, b in split_rows(rows, batcher.max_batch_size)]
        parts = await batcher.submit_all(chunks, ctx)  # every chunk admitted, or none
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    async def submit(self, procedure: str, payload: Any, ctx: Waiting | None = None) -> Any:
        if procedure not in self._procedures:
            raise NotFound(f"{self.name} v{self.version} has no procedure {procedure!r}")
        return await self.batchers[procedure].submit(payload, ctx)

    async def drain(self) -> None:
        await asyncio.gather(*(b.drain() for b in self.batchers.values()))
        self.executor.shutdown(wait=True)

    def stats(self) -> QueueStats:
        """Triton-style statistics of this version: every graph and procedure queue together."""
        return QueueStats.combine(b.stats for b in self.batchers.values())


async def teardown_version(family: Family | None, version: LoadedVersion) -> None:
    """The hub's hook when it retires `version` (after its drain): the family's `teardown` off the event loop
    (closing a database connection can wait on the network); failures are logged, the retirement goes on.
    `version.prepared` stays: a request that resolved the version before the swap may still read it."""
    if family is None or version.prepared is None:
        return
    try:
        await asyncio.to_thread(family.teardown, version, version.prepared)
    except Exception:  # noqa: BLE001 - a plug-in's clean-up must not stop the others or the shutdown
        log.exception("teardown of %s v%d (family %s) failed", version.name, version.version, family.name)
