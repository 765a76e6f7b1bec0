"""The service-wide byte bound of queued requests, and what a queued payload counts against it."""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np


def payload_nbytes(payload: object) -> int:
    """Bytes a queued payload holds in arrays and buffers (numpy arrays, bytes, and containers or dataclasses
    of them): what the queue's byte bound counts. Small Python objects count as nothing."""
    if isinstance(payload, np.ndarray):
        return payload.nbytes
    if isinstance(payload, bytes | bytearray | memoryview):
        return len(payload)
    if isinstance(payload, dict):
        return sum(payload_nbytes(v) for v in payload.values())
    if isinstance(payload, list | tuple):
        return sum(payload_nbytes(v) for v in payload)
    if dataclasses.is_dataclass(payload) and not isinstance(payload, type):
        return sum(payload_nbytes(getattr(payload, f.name)) for f in dataclasses.fields(payload))
    return 0


class _Gauge(Protocol):
    def set(self, value: float) -> None: ...


class QueueBytes:
    """The bytes held by every queued request of the service, against one bound (`SERVICE_MAX_QUEUED_BYTES`):
    a queue of decoded 4096x4096 images is bounded by memory, not only by its count of requests. Shared by
    every batcher; event loop only."""

    def __init__(self, limit: int, gauge: _Gauge | None = None) -> None:
        self.limit = limit
        self.held = 0
        self._gauge = gauge

    def fits(self, nbytes: int) -> bool:
        # One request larger than the whole bound is still admitted into an empty service.
        return self.held == 0 or self.held + nbytes <= self.limit

    def change(self, nbytes: int) -> None:
        self.held += nbytes
        if self._gauge is not None:
            self._gauge.set(self.held)
