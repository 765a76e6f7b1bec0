"""What a rollout is: its request body, its per-version counters and the automatic policy's bounds."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from service.rollouts.quality import Totals

LATENCY_WINDOW = 4096  # latencies kept per version and path for p50/p99 (the most recent ones)
DECISIONS_KEPT = 50


class Policy(BaseModel):
    """Automatic decisions, evaluated every `interval_s`: roll back when the candidate's error rate or p99
    passes a bound (after `min_requests` of its requests), promote when its quality figure beats the
    baseline's by `promote_margin` (relative) with at least `min_scored` scored samples on each side."""

    model_config = ConfigDict(extra="forbid")
    promote_margin: float | None = Field(None, ge=0, le=1, description="e.g. 0.02: candidate's figure 2 % "
                                         "better than the baseline's; null: never promote automatically")
    min_scored: int = Field(100, ge=1, description="scored samples per version before quality is compared "
                            "(each family's own: forecast points, classified samples, PSNR samples, "
                            "self-checked values)")
    max_error_rate: float | None = Field(None, ge=0, le=1, description="roll back above this share of 5xx")
    max_p99_ms: float | None = Field(None, gt=0, description="roll back when the candidate's p99 passes this")
    min_requests: int = Field(20, ge=1, description="candidate requests before the bounds apply")
    interval_s: float = Field(5.0, ge=0.1, le=3600)


class RolloutBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    candidate: int = Field(description="the version to try (a folder of the model in the repository)")
    mode: Literal["shadow", "canary"]
    percent: float = Field(0.0, ge=0, le=100, description="canary: share of requests the candidate answers")
    shadow_queue: int = Field(64, ge=1, le=4096, description="shadow copies waiting at most; more are dropped")
    shadow_percent: float = Field(100.0, ge=0, le=100, description="shadow: share of task requests copied to "
                                  "the candidate (a copy costs the CPU of a request: on a saturated machine, "
                                  "copy a sample)")
    policy: Policy | None = None

    @field_validator("candidate", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        # "2" as the issue writes it, or 2; digits only (no "+2", " 2", "²").
        if isinstance(value, str):
            if not (value.isascii() and value.isdigit() and len(value) <= 18):
                raise ValueError("candidate must be a version number (ASCII digits)")
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError("candidate must be a positive version number")
        return value


class PathStats:
    """Requests, 5xx errors and recent latencies of one version on one path (live or shadow)."""

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def add(self, seconds: float, error: bool) -> None:
        self.requests += 1
        self.errors += error
        self.latencies.append(seconds)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def quantile(q: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

        return {"requests": self.requests, "errors": self.errors,
                "error_rate": self.errors / self.requests if self.requests else None,
                "latency_p50_ms": quantile(0.5), "latency_p99_ms": quantile(0.99)}


@dataclass
class ShadowJob:
    scope: dict[str, Any]  # a clean copy of the live request's ASGI scope
    body: bytes
    baseline_answer: bytes | None  # None: nothing to compare
    fanout: bool = False  # a write every version must see (observations): not a request to compare on latency
    queued_at: float = field(default_factory=time.monotonic)


@dataclass
class Rollout:
    model: str
    family: str
    baseline: int
    candidate: int
    mode: str
    percent: float
    policy: Policy | None
    shadow_percent: float
    loaded_here: bool  # the candidate was loaded for this rollout (unloaded when it ends unpromoted)
    quality_at_start: Totals
    queue: asyncio.Queue[ShadowJob]
    started_at: float = field(default_factory=time.time)
    stats: dict[tuple[int, str], PathStats] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)
    shadow_run: int = 0
    compared: int = 0
    abs_difference_sum: float = 0.0
    abs_difference_n: int = 0
    agreed: int = 0
    agreement_n: int = 0
    decisions: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=DECISIONS_KEPT))
    tasks: list[asyncio.Task] = field(default_factory=list)

    def role(self, version: int) -> str:
        return "candidate" if version == self.candidate else "baseline"

    def path_stats(self, version: int, path: str) -> PathStats:
        found = self.stats.get((version, path))
        if found is None:
            found = self.stats[(version, path)] = PathStats()
        return found


@dataclass
class Ticket:
    """What the routing decided for one live request (kept in its ASGI scope state)."""

    rollout: Rollout
    version: int
    replay: bool  # run a copy on the candidate after the answer (shadow, or a fan-out write)
    compare: bool  # keep the baseline's answer to compare with the copy's
    fanout: bool = False  # a write such as observations: kept out of the requests / latency figures
