"""Session fixtures that build each family's model repository (registered by tests/conftest.py).

They live here rather than in the family conftests so that one test can start ONE server with every family
(`all_families_repository`). Heavy imports stay inside the fixtures: collecting any test must not import
training code or torch for families it does not use.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from testkit import export_tiny

WATER_TRAIN_STEPS = 400  # the missing-days margin over linear interpolation: ~6 % here, 1-3 % at 250 steps
CODEC_MAX_PIXELS = 200 * 200


# ---- traffic -----------------------------------------------------------------------------------------

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


# ---- weld --------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def weld_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic dataset in the real layout."""
    from training.weld.synthetic import generate

    root = tmp_path_factory.mktemp("weld-data")
    generate(root, train=3, val=1, test=2, seed=0)
    return root


@pytest.fixture(scope="session")
def weld_run(tmp_path_factory: pytest.TempPathFactory, weld_data: Path) -> Path:
    """Two epochs of the small config (enough to produce every artifact, not to converge)."""
    from training.threads import torch_threads
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


# ---- water -------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def water_trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """One fast-config model trained on synthetic data: (TrainResult, best checkpoint)."""
    from training.threads import torch_threads
    from training.water.config import fast_config
    from training.water.train import synthetic_splits, train

    out = tmp_path_factory.mktemp("water-train")
    cfg = fast_config()
    train_data, val_data = synthetic_splits(cfg, 2048, 32, seed=0)
    with torch_threads(1):
        result = train(cfg, train_data, val_data, steps=WATER_TRAIN_STEPS, batch_size=32, lr=1e-3, seed=0,
                       eval_every=WATER_TRAIN_STEPS, out_dir=out, data_description="synthetic test data", log=False)
    return result, out / "best.pt"


@pytest.fixture(scope="session")
def water_repository(tmp_path_factory: pytest.TempPathFactory, water_trained: tuple[Any, Path]) -> Path:
    from export.core import publish
    from export.families.water import plan_from_checkpoint
    from training.threads import torch_threads

    repository = tmp_path_factory.mktemp("water-repo")
    with torch_threads(1):
        publish(plan_from_checkpoint(water_trained[1]), repository, name="water")
    return repository


# ---- image codec -------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def imagecodec_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny codec with a non-trivial entropy model, exported as `imagecodec` v1 (ONNX)."""
    import torch

    from export.core import publish
    from export.families.imagecodec import plan_from_checkpoint
    from training.imagecodec.config import tiny_config
    from training.imagecodec.model import ImageCodec

    root = tmp_path_factory.mktemp("imagecodec-repo")
    torch.manual_seed(0)
    model = ImageCodec(tiny_config(phase="phase2"))
    with torch.no_grad():  # spread-out predicted scales, so that streams are not trivially small
        model.h_s.net[-1].bias[: model.cfg.M].uniform_(-1.0, 2.0)
    checkpoint = root / "ck.pt"
    torch.save({"config": model.cfg.to_dict(), "state_dict": model.state_dict(), "quality": 2}, checkpoint)
    repository = root / "repo"
    publish(plan_from_checkpoint(checkpoint, max_pixels=CODEC_MAX_PIXELS), repository, "imagecodec", version=1)
    return repository


# ---- everything in one repository --------------------------------------------------------------------

@pytest.fixture(scope="session")
def all_families_repository(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path,
                            traffic_repository: Path, weld_repository: Path, water_repository: Path,
                            imagecodec_repository: Path) -> Path:
    """Every family's built version copied into one repository, plus `tiny` (ONNX): one server serves all."""
    repository = tmp_path_factory.mktemp("all-families-repo")
    for source in (traffic_repository, weld_repository, water_repository, imagecodec_repository):
        for model_dir in source.iterdir():
            if model_dir.is_dir():
                shutil.copytree(model_dir, repository / model_dir.name)
    export_tiny(tiny_checkpoint, repository, "tiny")
    return repository
