"""Prometheus metrics. One registry per app so that several apps (tests) never collide."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

# Seconds. Dense between 1 ms and 1 s where CPU/GPU inference of these models lands, coarse beyond.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.4, 0.6,
    1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0,
)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160)

QUEUE_LABELS = ("model", "version", "queue")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_duration = Histogram(
            "inference_request_duration_seconds", "End-to-end HTTP request duration.",
            ("endpoint", "method", "code", "model", "version"), buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_wait = Histogram(
            "inference_queue_wait_seconds", "Time a request waited in the batcher queue.",
            QUEUE_LABELS, buckets=LATENCY_BUCKETS, registry=r,
        )
        self.compute = Histogram(
            "inference_compute_seconds", "Runtime execution time of one batch.",
            QUEUE_LABELS, buckets=LATENCY_BUCKETS, registry=r,
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
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.work_pending = Gauge("preprocess_pending", "Preprocessing jobs queued or running in the work pool.",
                                  registry=r)
        self.work_rejections = Counter("preprocess_rejections", "Preprocessing jobs refused or dropped, by reason.",
                                       ("reason",), registry=r)
        self.work_duration = Histogram("preprocess_duration_seconds", "Time of one preprocessing job on a worker.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.gpu = GpuCollector()
        if self.gpu.available:
            r.register(self.gpu)


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
