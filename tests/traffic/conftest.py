"""Traffic fixtures: a briefly trained tiny model (synthetic METR-LA files, 12 sensors) and its export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def traffic_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """configs/tiny.yaml: 3 short epochs on one thread (~30 s); the summary `train` returns."""
    from training.traffic.train import load_config, train

    return train(load_config("tiny"), tmp_path_factory.mktemp("traffic-run"), log=False)


@pytest.fixture(scope="session")
def traffic_repository(tmp_path_factory: pytest.TempPathFactory, traffic_run: dict[str, Any]) -> Path:
    """The tiny checkpoint exported (ONNX, parity-checked) as `traffic` v1."""
    from export.core import publish
    from export.families.traffic import plan_from_checkpoint

    repository = tmp_path_factory.mktemp("traffic-repo")
    publish(plan_from_checkpoint(Path(traffic_run["best_checkpoint"])), repository, "traffic")
    return repository
