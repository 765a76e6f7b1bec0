"""The /metrics page (service/exposition.py): the same text as prometheus_client's `generate_latest`, without
`_created` samples, with the buckets dashboards and alerts read."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from service.families import metric_builders, specs
from service.metrics import REQUEST_BUCKETS, Metrics


def _filled() -> Metrics:
    metrics = Metrics(metric_builders())
    assert all(metrics.family(name, spec.metrics) for name, spec in specs().items() if spec.metrics)
    for code in ("200", "404"):
        metrics.request_duration.labels("/v2/models/{model_name}/infer", "POST", code, "m", "1", "http").observe(0.02)
    metrics.request_duration.labels("unmatched", "GET", "404", "", "", "http").observe(7.5)
    metrics.queue_wait.labels("m", "1", "model").observe(0.0001)
    metrics.batch_size.labels("m", "1", "model").observe(3)
    metrics.requests.labels("m", "1", "model", "success").inc(5)
    metrics.model_ready.labels("m", "1").set(1)
    metrics.in_flight.inc()
    metrics.loop_lag.observe(0.002)
    metrics.queued_bytes.set(1e12)  # Go's exponent form
    return metrics


def test_the_page_is_generate_latests_text() -> None:
    metrics = _filled()
    assert metrics.page.render() == generate_latest(metrics.registry)
    # New series after the first render, a removed one, odd label values: still the same text.
    metrics.model_ready.labels("m", "2").set(0)
    metrics.model_ready.remove("m", "1")
    metrics.requests.labels('q"uo\\te\nnl', "1", "model", "error").inc()
    metrics.gc_pauses.install()
    try:
        import gc

        gc.collect()
        assert metrics.page.render() == generate_latest(metrics.registry)
    finally:
        metrics.gc_pauses.uninstall()


def test_every_kind_of_metric_on_a_registry_of_its_own() -> None:
    from service.exposition import MetricsPage

    registry = CollectorRegistry()
    Counter("plain", "No labels.", registry=registry).inc(2)
    Gauge("level", "A gauge.", ("a", "b"), registry=registry).labels("x", "y").set(-3.25)
    Histogram("negative", "Negative bounds: no _sum.", buckets=(-1.0, 0.0, 1.0), registry=registry).observe(-2)
    Histogram("empty", "No series yet.", ("k",), registry=registry)
    assert MetricsPage(registry).render() == generate_latest(registry)


def test_no_created_samples_and_the_buckets_alerts_read() -> None:
    text = _filled().page.render().decode()
    assert "_created" not in text
    assert {0.5, 1.0, 2.5} <= set(REQUEST_BUCKETS)  # docker/prometheus/alerts.yml: p99 > 1 s
    buckets = [line for line in text.splitlines() if line.startswith("inference_request_duration_seconds_bucket")]
    assert len(buckets) == 3 * (len(REQUEST_BUCKETS) + 1)
