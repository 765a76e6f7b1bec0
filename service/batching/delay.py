"""The adaptive delay policy's estimate: how much company a request waiting in a batcher can expect."""

from __future__ import annotations

import math
import time

DELAY_POLICIES = ("adaptive", "fixed")


class ArrivalRate:
    """Rate of arrivals that find other requests already held by the batcher (queued or computing), per
    second of time during which it holds any: the company a waiting request can expect. Closed-loop
    clients that wait for their answer (one client, or a few each waiting on its own request) bring none,
    so a lone request is not kept waiting for company that cannot come; under load the rate is high and
    batches fill. Both totals decay with time constant `tau_s`, so the estimate follows load changes."""

    def __init__(self, tau_s: float = 0.5) -> None:
        self.tau_s = tau_s
        self._company = 0.0  # decayed count of arrivals into an occupied batcher
        self._busy_s = 0.0  # decayed seconds with at least one request held
        self._held = 0
        self._last = time.monotonic()

    def _advance(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed > 0:
            decay = math.exp(-elapsed / self.tau_s)
            self._company *= decay
            self._busy_s = self._busy_s * decay + (self.tau_s * (1 - decay) if self._held else 0.0)
            self._last = now

    def arrive(self, now: float) -> None:
        self._advance(now)
        if self._held:
            self._company += 1
        self._held += 1

    def leave(self, now: float) -> None:
        self._advance(now)
        self._held -= 1

    def per_second(self, now: float) -> float:
        self._advance(now)
        return self._company / self._busy_s if self._busy_s > 1e-6 else 0.0
