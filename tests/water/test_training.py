"""Training produces checkpoints + JSON metrics; the trained fast model against the gap-filling baselines."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from families.water.contract import Normalisation
from families.water.preprocessing import MODALITIES
from training.checkpoints import CheckpointError
from training.water.baselines import BASELINES
from training.water.config import TrainingConfig, WaterConfig, fast_model, load_config
from training.water.data import generate, save_samples
from training.water.default import SHIPPED
from training.water.evaluate import evaluate
from training.water.train import FitResult, load_checkpoint, read_payload, train


@pytest.fixture(scope="module")
def evaluation(water_trained: tuple[FitResult, Path]) -> dict:
    result, _ = water_trained
    cfg = result.model.cfg
    held_out = generate(256, cfg.height, cfg.width, cfg.frames, cfg.series_len, seed=999)  # unseen catchments
    return evaluate(result.model, result.stats, result.climatology, held_out, seed=7)


def test_checkpoint_holds_model_stats_and_metrics(water_trained: tuple[FitResult, Path]) -> None:
    result, path = water_trained
    checkpoint = load_checkpoint(path)
    stats, clim = checkpoint.extras["stats"], checkpoint.extras["climatology"]
    assert checkpoint.family == "water" and read_payload(path)["family"] == "water"
    assert checkpoint.config == result.model.cfg and not checkpoint.model.training
    assert set(stats.mean) == set(MODALITIES) and stats.static_std.shape == (11,)
    assert Normalisation.of(stats) == Normalisation.of(result.stats)
    assert set(clim) == set(MODALITIES)
    for key, value in checkpoint.model.state_dict().items():
        assert torch.equal(value, result.model.state_dict()[key])
    metrics = json.loads((path.parent / "metrics.json").read_text())
    last = metrics["history"][-1]
    assert set(last["train"]) == set(MODALITIES) and set(last["val"]) == {*MODALITIES, "total"}
    assert metrics["best_val"] == pytest.approx(checkpoint.extras["metrics"]["best_val"])


def test_untagged_and_shipped_checkpoints_load_and_others_are_refused(water_trained: tuple[FitResult, Path],
                                                                      tmp_path: Path) -> None:
    """Checkpoints from before the family tag load (recognised by their keys), so does the shipped default;
    another family's checkpoint is refused before anything else is read."""
    payload = read_payload(water_trained[1])
    untagged = {k: v for k, v in payload.items() if k != "family"}
    torch.save(untagged, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").config == water_trained[0].model.cfg
    shipped = load_checkpoint(SHIPPED)
    assert shipped.config.height == 40 and shipped.extras["missing_fraction"] is None
    torch.save({**payload, "family": "traffic"}, tmp_path / "traffic.pt")
    with pytest.raises(CheckpointError, match="not a water checkpoint"):
        load_checkpoint(tmp_path / "traffic.pt")


def test_training_reduced_every_modality_loss(water_trained: tuple[FitResult, Path]) -> None:
    """Below an untrained model on every modality, and below the gap-filling prior alone in total (with
    prior_fill an untrained model returns exactly the prior)."""
    result, _ = water_trained
    from training.water.model import WaterMAE
    from training.water.train import prepare, validate

    cfg = result.model.cfg
    assert cfg.prior_fill
    val = generate(32, cfg.height, cfg.width, seed=1)
    prep = prepare(val, result.stats, cfg)
    untrained = WaterMAE(replace(cfg, prior_fill=False)).eval()
    before = validate(untrained, prepare(val, result.stats, untrained.cfg), untrained.cfg, 32)
    prior_only = validate(WaterMAE(cfg).eval(), prep, cfg, 32)
    after = validate(result.model, prep, cfg, 32)
    for m in MODALITIES:
        assert after[m] < before[m], m
    assert after["total"] < prior_only["total"], (after, prior_only)


@pytest.mark.parametrize("scenario", ["random75", "days", "region"])
def test_model_beats_every_baseline(evaluation: dict, scenario: str) -> None:
    """Held-out catchments, 75% random masks / a missing block of days / a missing region: the model's mean
    error over the modalities is below every baseline's (climatology, linear in time, nearest neighbour)."""
    scores = evaluation[scenario]
    assert np.isfinite(list(scores["model"]["mse"].values())).all()
    for method in BASELINES:
        assert scores["model"]["mse"]["mean"] < scores[method]["mse"]["mean"], (scenario, method, scores)


def test_model_beats_climatology_on_every_modality(evaluation: dict) -> None:
    for scenario, scores in evaluation.items():
        for m, value in scores["model"]["mse"].items():
            assert value < scores["climatology"]["mse"][m], (scenario, m)


def test_train_and_evaluate_clis(tmp_path: Path) -> None:
    from training.water.evaluate import main as evaluate_main
    from training.water.train import main as train_main

    train_main(["--config", "fast", "--steps", "3", "--eval-every", "3", "--n-train", "16", "--n-val", "4",
                "--batch-size", "4", "--out", str(tmp_path / "run"), "--set", "use_weighted_fm=true"])
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "last.pt").is_file()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 3
    evaluate_main(["--checkpoint", str(tmp_path / "run" / "best.pt"), "--n", "4", "--scenarios", "days",
                   "--out", str(tmp_path / "eval.json")])
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report["days"]) == {"model", "gap_prior", *BASELINES}


def test_train_on_a_dataset_folder_takes_its_shapes(tmp_path: Path) -> None:
    """The contract entry point: `train(config, out_dir, data)` on a folder in the real format; the grid and
    series sizes come from the files, the rest from the config."""
    save_samples(generate(10, 20, 30, frames=3, series_len=8, seed=3), tmp_path / "samples")
    config = WaterConfig(model=fast_model(), training=TrainingConfig(steps=2, batch_size=4, eval_every=2,
                                                                     val_fraction=0.2))
    lines: list[str] = []
    result = train(config, tmp_path / "run", tmp_path / "samples", log=lines.append)
    checkpoint = load_checkpoint(result.best_checkpoint)
    shape = checkpoint.config
    assert (shape.frames, shape.height, shape.width, shape.series_len) == (3, 20, 30, 8)
    assert result.summary["steps"] == 2 and "8 train / 2 val" in checkpoint.extras["data"]
    assert lines[0].startswith("parameters:") and "best validation loss" in lines[-1]


def test_load_config_presets_and_files(tmp_path: Path) -> None:
    assert load_config("fast").model == fast_model() and load_config("small").training == TrainingConfig()
    (tmp_path / "run.json").write_text(json.dumps({"model": {"height": 20, "width": 20}, "training": {"steps": 7}}))
    config = load_config(tmp_path / "run.json")
    assert (config.model.height, config.training.steps, config.training.lr) == (20, 7, TrainingConfig().lr)
    with pytest.raises(ValueError, match="unknown water config"):
        load_config("medium")
