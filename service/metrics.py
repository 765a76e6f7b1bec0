"""Prometheus metrics. One registry per app so that several apps (tests) never collide.

The page stays small and cheap to scrape (issue 28): no `_created` samples (Prometheus does not read them),
buckets sized to each histogram's range, labels bounded (route templates, loaded models and versions, a few
codes), a page written without re-formatting every label on every scrape (service/exposition.py), and a
family's own series are its plug-in's (`FamilySpec.metrics`, made once per app by `family`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from service.batching.observer import OUTCOMES, REJECTIONS
from service.exposition import MetricsPage
from service.gc_tuning import GcPauses
from service.rollouts.metrics import RolloutMetrics

log = logging.getLogger(__name__)
# Process-wide: `<counter>_created` / `<histogram>_created` doubled every series' lines and nothing reads them.
prometheus_client.disable_created_metrics()

# Seconds, end to end: from a sub-millisecond /v2 answer to a multi-second image upload. The alert on p99 > 1 s
# needs 0.5, 1 and 2.5 (docker/prometheus/alerts.yml).
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
# Seconds of one stage (queue wait, a batch's compute, a preprocessing job): down to 100 us.
STAGE_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
# How late the 50 ms loop timer woke: healthy is under a millisecond, trouble is tens of them.
LAG_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LOAD_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 20, 40, 80, 160)

QUEUE_LABELS = ("model", "version", "queue")
VERSION_LABELS = ("model", "version")
FamilyMetricsT = TypeVar("FamilyMetricsT")


class Metrics:
    def __init__(self, families: Mapping[str, Callable[[CollectorRegistry], Any]] | None = None) -> None:
        """`families`: each family's `FamilySpec.metrics` by name (the app passes every registered family's:
        `service.families.metric_builders()`), made now so that their series are described from the first scrape
        on; a family not given here gets its series when it first asks (`family`)."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_duration = Histogram(
            "inference_request_duration_seconds", "End-to-end request duration (protocol: http or grpc; "
            "code: the HTTP status, for gRPC the one the same outcome gets over HTTP).",
            ("endpoint", "method", "code", "model", "version", "protocol"), buckets=REQUEST_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            "inference_queue_wait_seconds", "Time a request waited in the batcher queue.",
            QUEUE_LABELS, buckets=STAGE_BUCKETS, registry=r,
        )
        self.compute = Histogram(
            "inference_compute_seconds", "Runtime execution time of one batch.",
            QUEUE_LABELS, buckets=STAGE_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "inference_batch_size", "Rows per executed batch.", QUEUE_LABELS, buckets=BATCH_BUCKETS, registry=r,
        )
        self.requests = Counter(
            "inference_requests", "Batcher requests by outcome.", (*QUEUE_LABELS, "outcome"), registry=r,
        )
        self.rejections = Counter(
            "inference_rejections", "Requests rejected without computing, by reason.",
            (*QUEUE_LABELS, "reason"), registry=r,
        )
        self.queue_depth = Gauge("inference_queue_depth", "Requests waiting in the queue.", QUEUE_LABELS, registry=r)
        self.queued_bytes = Gauge("inference_queued_bytes", "Bytes held by queued requests, every queue together "
                                  "(bounded by SERVICE_MAX_QUEUED_BYTES).", registry=r)
        self.load_duration = Histogram(
            "model_load_duration_seconds", "Time to open and warm up a model version.",
            ("model", "version"), buckets=LOAD_BUCKETS, registry=r,
        )
        self.model_ready = Gauge("model_ready", "1 while the model version serves requests.",
                                 ("model", "version"), registry=r)
        self.load_failures = Counter("model_load_failures", "Model versions that failed to load.",
                                     ("model", "version"), registry=r)
        self.model_fallback = Gauge("model_fallback", "1 while an older version serves because the latest "
                                    "failed to load at start-up.", ("model",), registry=r)
        self.in_flight = Gauge("http_requests_in_flight", "HTTP requests being handled.", registry=r)
        # How late a fixed-interval sleep on the event loop woke: time the loop was blocked by someone.
        self.loop_lag = Histogram("event_loop_lag_seconds", "Event-loop wake-up delay of a periodic timer.",
                                  buckets=LAG_BUCKETS, registry=r)
        self.work_pending = Gauge("preprocess_pending", "Preprocessing jobs queued or running in the work pool.",
                                  registry=r)
        self.work_rejections = Counter("preprocess_rejections", "Preprocessing jobs refused or dropped, by reason.",
                                       ("reason",), registry=r)
        self.work_duration = Histogram("preprocess_duration_seconds", "Time of one preprocessing job on a worker.",
                                       buckets=STAGE_BUCKETS, registry=r)
        # Cyclic GC pauses (gc.callbacks, installed by the app's lifespan): gc_pause_seconds{generation}.
        self.gc_pauses = GcPauses()
        r.register(self.gc_pauses)
        # Live model quality (service/quality, docs/quality.md): the drift series every family may use; each
        # family's own quality series are in `family(name)`. Bounded labels, no per-sample ones.
        self.drift = DriftMetrics(r)
        self._families: dict[str, Any] = {}
        for name, build in (families or {}).items():
            self.family(name, build)
        self.rollouts = RolloutMetrics(r)  # rollout_* (service/rollouts)
        self.gpu = GpuCollector()
        if self.gpu.available:
            r.register(self.gpu)
        self.page = MetricsPage(r)  # /metrics: generate_latest's text, each series' labels formatted once


    def family(self, name: str, build: Callable[[CollectorRegistry], FamilyMetricsT]) -> FamilyMetricsT:
        """Family `name`'s own series (its `FamilySpec.metrics`), built on this registry the first time."""
        found = self._families.get(name)
        if found is None:
            found = self._families[name] = build(self.registry)
        return found


class DriftMetrics:
    """Input drift (service/quality/drift.py), shared by every family that ships training statistics: live sums
    and counts (counters, so that Prometheus computes the drift over any window) beside the training ones."""

    def __init__(self, r: CollectorRegistry) -> None:
        drift = (*VERSION_LABELS, "statistic")
        self.input_sum = Counter("quality_input_statistic_sum", "Sum of a live input statistic (drift).", drift,
                                 registry=r)
        self.input_count = Counter("quality_input_statistic_count", "Values summed in "
                                   "quality_input_statistic_sum_total.", drift, registry=r)
        self.training_mean = Gauge("quality_training_statistic_mean", "The statistic's mean on the training "
                                   "data (manifest training_statistics).", drift, registry=r)
        self.training_std = Gauge("quality_training_statistic_std", "The statistic's standard deviation on "
                                  "the training data (floored so that drift stays finite).", drift, registry=r)


class GpuCollector:
    """GPU memory and utilisation per device from NVML, read at scrape time."""

    def __init__(self) -> None:
        self.available = False
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._count = pynvml.nvmlDeviceGetCount()
            self.available = self._count > 0
        except Exception:  # noqa: BLE001 - no NVML library or no GPU: the metrics are simply absent
            log.info("NVML not available; GPU metrics disabled")

    def describe(self):  # noqa: ANN201 - prometheus_client collector protocol
        return []

    def collect(self):  # noqa: ANN201
        used = GaugeMetricFamily("gpu_memory_used_bytes", "GPU memory in use.", labels=["device"])
        total = GaugeMetricFamily("gpu_memory_total_bytes", "GPU memory size.", labels=["device"])
        util = GaugeMetricFamily("gpu_utilization_ratio", "GPU busy fraction over the last sample.",
                                 labels=["device"])
        nvml = self._nvml
        for index in range(self._count):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            used.add_metric([str(index)], float(memory.used))
            total.add_metric([str(index)], float(memory.total))
            util.add_metric([str(index)], rates.gpu / 100.0)
        yield from (used, total, util)


class PrometheusBatchObserver:
    """A batcher's reports (service.batching.observer.BatchObserver) as the queue's Prometheus series, each
    labelled child looked up once here, never per request."""

    def __init__(self, metrics: Metrics, model: str, version: int, queue: str) -> None:
        labels = {"model": model, "version": str(version), "queue": queue}
        self.waited = metrics.queue_wait.labels(**labels).observe
        self.computed = metrics.compute.labels(**labels).observe
        self.batch = metrics.batch_size.labels(**labels).observe
        self.depth = metrics.queue_depth.labels(**labels).set
        self._outcomes = {o: metrics.requests.labels(**labels, outcome=o).inc for o in OUTCOMES}
        self._rejections = {r: metrics.rejections.labels(**labels, reason=r).inc for r in REJECTIONS}

    def outcome(self, outcome: str) -> None:
        self._outcomes[outcome]()

    def rejected(self, reason: str) -> None:
        self._rejections[reason]()
