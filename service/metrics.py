"""Prometheus metrics. One registry per app so that several apps (tests) never collide."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from service.batching.observer import OUTCOMES, REJECTIONS
from service.gc_tuning import GcPauses
from service.rollouts.metrics import RolloutMetrics

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
            "inference_request_duration_seconds", "End-to-end request duration (protocol: http or grpc; "
            "code: the HTTP status, for gRPC the one the same outcome gets over HTTP).",
            ("endpoint", "method", "code", "model", "version", "protocol"), buckets=LATENCY_BUCKETS, registry=r,
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
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.work_pending = Gauge("preprocess_pending", "Preprocessing jobs queued or running in the work pool.",
                                  registry=r)
        self.work_rejections = Counter("preprocess_rejections", "Preprocessing jobs refused or dropped, by reason.",
                                       ("reason",), registry=r)
        self.work_duration = Histogram("preprocess_duration_seconds", "Time of one preprocessing job on a worker.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        # Cyclic GC pauses (gc.callbacks, installed by the app's lifespan): gc_pause_seconds{generation}.
        self.gc_pauses = GcPauses()
        r.register(self.gc_pauses)
        # Live model quality (service/quality, docs/quality.md): bounded labels, no per-sample ones.
        self.quality = QualityMetrics(r)
        self.rollouts = RolloutMetrics(r)  # rollout_* (service/rollouts)
        self.gpu = GpuCollector()
        if self.gpu.available:
            r.register(self.gpu)


# Forecast horizons, distances and margins: labels stay bounded (horizon steps, classes, codec levels).
DISTANCE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
                    10.0, 20.0, 50.0, 100.0, 1000.0)
MARGIN_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
BPP_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
PSNR_BUCKETS = (15.0, 20.0, 22.0, 24.0, 26.0, 28.0, 30.0, 32.0, 34.0, 36.0, 38.0, 40.0, 45.0, 50.0)
VERSION_LABELS = ("model", "version")


class QualityMetrics:
    """Live quality signals. Errors are exported as sums and counts (counters) so that Prometheus computes
    MAE / RMSE / MAPE and drift over any window; a gauge only where a window lives in the service."""

    def __init__(self, r: CollectorRegistry) -> None:
        horizon = (*VERSION_LABELS, "horizon", "predictor")  # predictor: model | last_value
        self.forecast_abs_error = Counter("quality_forecast_abs_error", "Sum of |forecast - actual| (mph) over "
                                          "scored points.", horizon, registry=r)
        self.forecast_squared_error = Counter("quality_forecast_squared_error", "Sum of (forecast - actual)^2 "
                                              "(mph^2) over scored points.", horizon, registry=r)
        self.forecast_abs_pct_error = Counter("quality_forecast_abs_percentage_error", "Sum of |forecast - "
                                              "actual| / actual over scored points (a ratio).", horizon, registry=r)
        self.forecast_points = Counter("quality_forecast_points", "Forecast points scored against an actual.",
                                       horizon, registry=r)
        self.observations = Counter("quality_observations", "Observed readings by outcome: matched, duplicate, "
                                    "late, unmatched, missing.", (*VERSION_LABELS, "outcome"), registry=r)
        self.forecasts_stored = Gauge("quality_forecasts_stored", "Served forecasts kept for scoring.",
                                      VERSION_LABELS, registry=r)
        drift = (*VERSION_LABELS, "statistic")
        self.input_sum = Counter("quality_input_statistic_sum", "Sum of a live input statistic (drift).", drift,
                                 registry=r)
        self.input_count = Counter("quality_input_statistic_count", "Values summed in "
                                   "quality_input_statistic_sum_total.", drift, registry=r)
        self.training_mean = Gauge("quality_training_statistic_mean", "The statistic's mean on the training "
                                   "data (manifest training_statistics).", drift, registry=r)
        self.training_std = Gauge("quality_training_statistic_std", "The statistic's standard deviation on "
                                  "the training data (floored so that drift stays finite).", drift, registry=r)
        by_class = (*VERSION_LABELS, "class")
        self.nearest_distance = Histogram("quality_nearest_distance", "Distance to the nearest gallery "
                                          "reference, by predicted class.", by_class, buckets=DISTANCE_BUCKETS,
                                          registry=r)
        self.vote_margin = Histogram("quality_vote_margin", "Top vote share minus the runner-up's, by "
                                     "predicted class.", by_class, buckets=MARGIN_BUCKETS, registry=r)
        self.predictions = Counter("quality_predictions", "Classified samples by predicted class.", by_class,
                                   registry=r)
        self.ood_samples = Counter("quality_ood_samples", "Classified samples farther from the gallery than its "
                                   "leave-one-out p99 nearest distance.", VERSION_LABELS, registry=r)
        self.ood_ratio = Gauge("quality_ood_ratio", "Share of the last classified samples (a bounded window) "
                               "that are out of distribution.", VERSION_LABELS, registry=r)
        self.ood_threshold = Gauge("quality_ood_threshold", "The gallery's leave-one-out p99 nearest distance.",
                                   (*VERSION_LABELS, "metric"), registry=r)
        by_level = (*VERSION_LABELS, "level")
        self.codec_bpp = Histogram("quality_codec_bits_per_pixel", "Compressed bits per pixel, by level.",
                                   by_level, buckets=BPP_BUCKETS, registry=r)
        self.codec_psnr = Histogram("quality_codec_psnr_db", "PSNR (dB) of the reconstruction of a sampled "
                                    "fraction of compressions, by level.", by_level, buckets=PSNR_BUCKETS,
                                    registry=r)
        by_modality = (*VERSION_LABELS, "modality")
        self.selfcheck_abs_error = Counter("quality_selfcheck_abs_error", "Sum of |reconstruction - hidden "
                                           "value| (normalised units) on sampled requests.", by_modality, registry=r)
        self.selfcheck_points = Counter("quality_selfcheck_points", "Hidden values reconstructed by the "
                                        "self-check.", by_modality, registry=r)


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
