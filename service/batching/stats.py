"""Triton's statistics of a queue (`/v2/models/{model}/stats`): plain counters the batcher updates on the event
loop, no locks; `QueueStats.combine` sums a version's graph and procedure queues."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Duration:
    """Triton's StatisticDuration: how many, and their cumulative nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def merge(self, other: Duration) -> None:
        self.count += other.count
        self.ns += other.ns

    def as_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ComputePhases:
    """Seconds of the last batch spent preparing inputs and splitting outputs, for a `run_batch` that can
    tell them apart (it writes them on the worker thread; the batcher reads them after the batch)."""

    input_s: float = 0.0
    output_s: float = 0.0


@dataclass
class PhaseStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)

    def add(self, input_s: float, infer_s: float, output_s: float) -> None:
        self.compute_input.add(input_s)
        self.compute_infer.add(infer_s)
        self.compute_output.add(output_s)

    def merge(self, other: PhaseStats) -> None:
        self.compute_input.merge(other.compute_input)
        self.compute_infer.merge(other.compute_infer)
        self.compute_output.merge(other.compute_output)


@dataclass
class QueueStats:
    """Triton's statistics of one queue: per-request durations (success, fail, queue, compute phases of the
    batch each successful request ran in), executions by batch size, rows inferred."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute: PhaseStats = field(default_factory=PhaseStats)
    inference_count: int = 0  # rows of successful requests
    execution_count: int = 0  # batches run successfully
    last_inference_ms: int = 0  # epoch milliseconds of the last successful batch
    batches: dict[int, PhaseStats] = field(default_factory=dict)  # by rows per batch

    @classmethod
    def combine(cls, parts: Iterable[QueueStats]) -> QueueStats:
        total = cls()
        for part in parts:
            for name in ("success", "fail", "queue"):
                getattr(total, name).merge(getattr(part, name))
            total.compute.merge(part.compute)
            total.inference_count += part.inference_count
            total.execution_count += part.execution_count
            total.last_inference_ms = max(total.last_inference_ms, part.last_inference_ms)
            for size, phases in part.batches.items():
                total.batches.setdefault(size, PhaseStats()).merge(phases)
        return total
