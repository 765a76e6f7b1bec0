"""What a batcher reports, and to whom: the `BatchObserver` protocol. The Prometheus implementation is
`service.metrics.PrometheusBatchObserver` (one per queue, its labelled series looked up once)."""

from __future__ import annotations

from typing import Protocol

# A request's outcome as `inference_requests_total{outcome}` counts it.
OUTCOMES = ("success", "error", "rejected", "timeout", "cancelled")
# Why a request left without being computed (`inference_rejections_total{reason}`).
REJECTIONS = ("queue_full", "deadline", "disconnected", "shutting_down", "request_failed")


class BatchObserver(Protocol):
    def depth(self, queued: int) -> None:
        """Requests now waiting in the queue."""

    def waited(self, seconds: float) -> None:
        """One request left the queue for a batch after `seconds`."""

    def computed(self, seconds: float) -> None:
        """One batch took `seconds` to run."""

    def batch(self, rows: int) -> None:
        """One batch of `rows` rows is about to run."""

    def outcome(self, outcome: str) -> None:
        """One request ended: one of OUTCOMES."""

    def rejected(self, reason: str) -> None:
        """One request left without being computed: one of REJECTIONS."""


class NullObserver(BatchObserver):
    """Reports to nobody (a batcher built outside the service, e.g. in a benchmark): the protocol's methods,
    inherited, do nothing."""
