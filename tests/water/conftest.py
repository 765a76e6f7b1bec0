"""Water fixtures: one fast-config model trained on synthetic data, and its exported repository."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from export.core import publish
from export.families.water import plan_from_checkpoint
from training.threads import torch_threads
from training.water.config import fast_config
from training.water.train import TrainResult, synthetic_splits, train

TRAIN_STEPS = 400  # the missing-days margin over linear interpolation: ~6 % here, 1-3 % at 250 steps


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread_per_module() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def water_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, Path]:
    out = tmp_path_factory.mktemp("water-train")
    cfg = fast_config()
    train_data, val_data = synthetic_splits(cfg, 2048, 32, seed=0)
    with torch_threads(1):
        result = train(cfg, train_data, val_data, steps=TRAIN_STEPS, batch_size=32, lr=1e-3, seed=0,
                       eval_every=TRAIN_STEPS, out_dir=out, data_description="synthetic test data", log=False)
    return result, out / "best.pt"


@pytest.fixture(scope="session")
def water_repository(tmp_path_factory: pytest.TempPathFactory, water_trained: tuple[TrainResult, Path]) -> Path:
    repository = tmp_path_factory.mktemp("water-repo")
    with torch_threads(1):
        publish(plan_from_checkpoint(water_trained[1]), repository, name="water")
    return repository
