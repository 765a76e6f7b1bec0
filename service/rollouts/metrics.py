"""Prometheus series of rollouts (`rollout_*`): registered by `service.metrics.Metrics` on the app's registry.

Labels stay bounded: models are the repository's, versions the two of a rollout, roles and reasons are few.
`rollout_version_role{model, version, role}` is 1 for the baseline and the candidate of a running rollout, so
that PromQL can join any per-version quality series (which carry `version`) to its role (alert rules in
docker/prometheus/rollout_alerts.yml, the Grafana "Rollout" dashboard).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ROLLOUT_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0,
                           2.5, 5.0, 10.0, 30.0)


class RolloutMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.active = Gauge("rollout_active", "1 while a rollout runs for the model, by mode (shadow | canary).",
                            ("model", "mode"), registry=r)
        self.percent = Gauge("rollout_percent", "Share of requests (0-100) the candidate answers (canary; 0 in "
                             "shadow).", ("model",), registry=r)
        self.role = Gauge("rollout_version_role", "1 for the baseline and the candidate version of a running "
                          "rollout (join per-version quality series on model, version).",
                          ("model", "version", "role"), registry=r)
        self.requests = Counter("rollout_requests", "Requests of a rollout per version: path live (answered the "
                                "client) or shadow (a copy off the response path); outcome ok | error (5xx).",
                                ("model", "version", "role", "path", "outcome"), registry=r)
        self.duration = Histogram("rollout_request_duration_seconds", "Duration of the rollout's requests per "
                                  "version and path (live: end to end; shadow: the replayed copy).",
                                  ("model", "version", "role", "path"), buckets=ROLLOUT_LATENCY_BUCKETS,
                                  registry=r)
        self.shadow_dropped = Counter("rollout_shadow_dropped", "Shadow copies not run, by reason: queue_full "
                                      "(the candidate fell behind), stale (waited too long), busy (the work "
                                      "pool was over half full), ended (the rollout ended first).",
                                      ("model", "version", "reason"), registry=r)
        self.shadow_queued = Gauge("rollout_shadow_queue_depth", "Shadow copies waiting.", ("model",), registry=r)
        self.compared = Counter("rollout_shadow_compared", "Shadow copies whose answer was compared with the "
                                "baseline's.", ("model", "version"), registry=r)
        self.abs_difference = Counter("rollout_shadow_abs_difference", "Sum over compared requests of the mean "
                                      "|candidate - baseline| of their numeric outputs (in the outputs' units).",
                                      ("model", "version"), registry=r)
        self.agreed = Counter("rollout_shadow_agreed", "Compared requests where both versions predicted the "
                              "same classes (classifiers).", ("model", "version"), registry=r)
        self.decisions = Counter("rollout_decisions", "Rollout decisions: start, promote, end, auto_promote, "
                                 "auto_rollback.", ("model", "decision"), registry=r)
