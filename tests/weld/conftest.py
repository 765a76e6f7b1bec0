"""Weld fixtures: a small synthetic dataset in the real layout, a briefly trained small model, its export."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.threads import torch_threads


@pytest.fixture(scope="session")
def weld_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.weld.synthetic import generate

    root = tmp_path_factory.mktemp("weld-data")
    generate(root, train=3, val=1, test=2, seed=0)
    return root


@pytest.fixture(scope="session")
def weld_run(tmp_path_factory: pytest.TempPathFactory, weld_data: Path) -> Path:
    """Two epochs of the small config (enough to produce every artifact, not to converge)."""
    from training.weld.config import small
    from training.weld.train import train

    config = small()
    config.train.epochs = 2
    out = tmp_path_factory.mktemp("weld-run")
    with torch_threads(1):
        train(config, weld_data, out, log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def weld_repository(tmp_path_factory: pytest.TempPathFactory, weld_run: Path) -> Path:
    from export.core import publish, with_batching
    from export.families.weld import plan_from_checkpoint

    repository = tmp_path_factory.mktemp("weld-repo")
    publish(with_batching(plan_from_checkpoint(weld_run / "best.pt"), {"max_queue_delay_ms": "2"}), repository, "weld")
    return repository
