"""Torch intra-op threads for a block of code, restored afterwards.

The models trained on CPU here are small: one thread is usually faster than two fighting over the shared
cores of a small machine (OpenMP spin contention), so defaults and tests pin it for their duration.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with `count` torch threads (None: leave the setting alone)."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(before)
