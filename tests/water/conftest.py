"""Water tests run torch on one thread per module (the fixtures live in tests/fixtures/water.py, shared with the
tests that serve every family at once); only the per-module torch thread setting stays here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from training.threads import torch_threads


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread_per_module() -> Iterator[None]:
    with torch_threads(1):
        yield
