"""Training produces checkpoints + JSON metrics; the trained fast model against the gap-filling baselines."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from families.water.preprocessing import MODALITIES
from training.water.baselines import BASELINES
from training.water.data import generate
from training.water.evaluate import evaluate
from training.water.train import TrainResult, load_checkpoint


@pytest.fixture(scope="module")
def evaluation(water_trained: tuple[TrainResult, Path]) -> dict:
    result, _ = water_trained
    cfg = result.model.cfg
    held_out = generate(256, cfg.height, cfg.width, cfg.frames, cfg.series_len, seed=999)  # unseen catchments
    return evaluate(result.model, result.stats, result.climatology, held_out, seed=7)


def test_checkpoint_holds_model_stats_and_metrics(water_trained: tuple[TrainResult, Path]) -> None:
    result, path = water_trained
    model, stats, clim, ckpt = load_checkpoint(path)
    assert set(stats.mean) == set(MODALITIES) and stats.static_std.shape == (11,)
    assert stats.to_dict() == result.stats.to_dict()
    assert set(clim) == set(MODALITIES)
    for key, value in model.state_dict().items():
        assert torch.equal(value, result.model.state_dict()[key])
    metrics = json.loads((path.parent / "metrics.json").read_text())
    last = metrics["history"][-1]
    assert set(last["train"]) == set(MODALITIES) and set(last["val"]) == {*MODALITIES, "total"}
    assert metrics["best_val"] == pytest.approx(ckpt["metrics"]["best_val"])


def test_training_reduced_every_modality_loss(water_trained: tuple[TrainResult, Path]) -> None:
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
