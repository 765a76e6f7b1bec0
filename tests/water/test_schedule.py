"""mask_schedule (issue 15 item 12) and the prior-alone baseline `gap_prior` of the evaluation CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from families.water.preprocessing import MODALITIES, NormStats
from training.water import data as water_data
from training.water.baselines import climatology_table
from training.water.config import WaterModelConfig, fast_model, full_model, small_model
from training.water.evaluate import evaluate, format_table
from training.water.masking import training_masks
from training.water.model import WaterMAE


def test_defaults_keep_mixed_and_research_uses_random() -> None:
    assert small_model().mask_schedule == "mixed" and fast_model().mask_schedule == "mixed"
    assert full_model().mask_schedule == "random"
    with pytest.raises(ValueError, match="mask_schedule"):
        fast_model(mask_schedule="blocks")


def test_random_schedule_hides_mask_ratio_of_every_modality() -> None:
    cfg = fast_model(mask_schedule="random")
    masks = training_masks(np.random.default_rng(0), 16, cfg)
    for m in MODALITIES:
        assert masks[m].shape == (16, cfg.tokens(m))
        np.testing.assert_array_equal(masks[m].sum(axis=1), round(cfg.mask_ratio * cfg.tokens(m)))


def test_mixed_schedule_is_unchanged_by_the_switch() -> None:
    """The default draws the same masks as before (so the shipped model's training reproduces)."""
    cfg = fast_model()
    a = training_masks(np.random.default_rng(3), 32, cfg)
    b = training_masks(np.random.default_rng(3), 32, WaterModelConfig.from_dict(cfg.to_dict()))
    for m in MODALITIES:
        np.testing.assert_array_equal(a[m], b[m])
    # Contiguous day blocks exist: some rows hide whole frames, which random 75 % (rounded) alone does not.
    ratio = a["riverflow"].mean(axis=1)
    assert len(np.unique(ratio)) > 1


def test_evaluation_reports_gap_prior_and_untrained_model_equals_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = fast_model()
    model = WaterMAE(cfg).eval()
    data = water_data.generate(8, cfg.height, cfg.width, cfg.frames, cfg.series_len, seed=5)
    stats = NormStats.fit(data.fields, data.static)
    results = evaluate(model, stats, climatology_table(data.fields), data, ("random75", "days"), batch_size=8)
    for scenario in ("random75", "days"):
        methods = results[scenario]
        assert "gap_prior" in methods and np.isfinite(methods["gap_prior"]["mse"]["mean"])
        # prior_fill's residual head starts at zero: the untrained model returns the prior.
        assert methods["model"]["mse"]["mean"] == pytest.approx(methods["gap_prior"]["mse"]["mean"], rel=1e-3)
    assert "gap_prior" in format_table(results)
    json.dumps(results)
