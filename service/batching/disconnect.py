"""How the batcher learns of a client's disconnect without a waiter task per queued request."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class DisconnectSignal(asyncio.Event):
    """An asyncio.Event that also calls registered callbacks when set: the batcher learns of a disconnect
    without a waiter task per queued request."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        super().set()
        for callback in list(self._callbacks):
            callback()

    def add_callback(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def remove_callback(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._callbacks.remove(callback)

