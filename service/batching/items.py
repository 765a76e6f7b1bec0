"""A queued request's record inside a batcher, its life states, and the model instances batches run on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

from service.batching.stats import ComputePhases

P = TypeVar("P")
R = TypeVar("R")


class Waiting(Protocol):
    """What a batcher reads from the request it queues (service.dataplane.context.RequestContext): its
    `time.monotonic()` deadline (None: the queue's default timeout) and its disconnect signal."""

    deadline: float | None
    disconnected: asyncio.Event

    def waiting(self) -> None:
        """Called before the request waits for its batch: the context starts watching the client then."""


class ItemState(StrEnum):
    """A queued request's life: QUEUED -> RUNNING (in a batch) | DROPPED (deadline, disconnect, cancel)."""

    QUEUED = "queued"
    RUNNING = "running"
    DROPPED = "dropped"


class _Dropped:
    """What a dropped item holds in place of its request's future: always done, never awaited."""

    @staticmethod
    def done() -> bool:
        return True


_DROPPED: asyncio.Future = _Dropped()  # type: ignore[assignment]


@dataclass(eq=False)
class _Item(Generic[P]):
    payload: P | None  # None once dropped: a request that gave up releases its tensors at once
    rows: int
    key: Hashable
    deadline: float
    future: asyncio.Future  # the waiter's; a dropped item lets go of it (see _drop)
    enqueued_at: float = 0.0
    nbytes: int = 0
    state: ItemState = ItemState.QUEUED


@dataclass
class _Instance(Generic[P, R]):
    """One execution slot (Triton's model instance): its own batch function (own session) and phases."""

    index: int
    run_batch: Callable[[list[P]], list[R]]
    phases: ComputePhases | None
