"""Masked metrics against hand-computed values (null value 0 = missing), and the two baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.traffic.baselines import last_value
from training.traffic.metrics import horizon_table, masked_mae, masked_mae_torch, masked_mape, masked_rmse


def test_masked_metrics_hand_computed() -> None:
    preds = np.array([[1.0, 2.0], [3.0, 4.0]])
    labels = np.array([[2.0, 0.0], [1.0, 5.0]])  # one missing target: its error (2) must not count
    # valid errors 1, 2, 1 -> MAE 4/3; squared 1, 4, 1 -> RMSE sqrt(2); relative 1/2, 2/1, 1/5 -> MAPE 0.9
    assert masked_mae(preds, labels) == pytest.approx(4 / 3)
    assert masked_rmse(preds, labels) == pytest.approx(math.sqrt(2))
    assert masked_mape(preds, labels) == pytest.approx(0.9)
    assert masked_mae_torch(torch.tensor(preds), torch.tensor(labels)).item() == pytest.approx(4 / 3)


def test_all_missing_targets_score_zero_not_nan() -> None:
    preds, labels = np.ones((3, 4)), np.zeros((3, 4))
    assert masked_mae(preds, labels) == 0.0
    assert masked_rmse(preds, labels) == 0.0
    assert masked_mape(preds, labels) == 0.0
    assert masked_mae_torch(torch.ones(3, 4), torch.zeros(3, 4)).item() == 0.0


def test_no_missing_equals_plain_metrics() -> None:
    rng = np.random.default_rng(0)
    preds, labels = rng.uniform(10, 70, (5, 12, 7)), rng.uniform(10, 70, (5, 12, 7))
    assert masked_mae(preds, labels) == pytest.approx(np.abs(preds - labels).mean())
    assert masked_rmse(preds, labels) == pytest.approx(np.sqrt(np.square(preds - labels).mean()))
    assert masked_mape(preds, labels) == pytest.approx((np.abs(preds - labels) / labels).mean())


def test_horizon_table_indices_and_average() -> None:
    labels = np.full((2, 12, 3, 1), 50.0)
    errors = np.arange(1, 13, dtype=np.float64)[None, :, None, None]  # error h+1 at horizon index h
    preds = labels + errors
    preds[0, 2, 0, 0] = 999.0
    labels[0, 2, 0, 0] = 0.0  # a missing target at horizon 3 must not change its MAE
    table = horizon_table(preds, labels)
    assert table["horizon_3"]["mae"] == pytest.approx(3.0)
    assert table["horizon_6"]["mae"] == pytest.approx(6.0)
    assert table["horizon_12"]["mae"] == pytest.approx(12.0)
    assert table["horizon_12"]["rmse"] == pytest.approx(12.0)
    assert table["horizon_12"]["mape"] == pytest.approx(12.0 / 50.0)
    assert table["average"]["mae"] == pytest.approx(6.5)  # mean of the 12 per-horizon values


def test_last_value_skips_missing_readings() -> None:
    inputs = np.array([[[10.0, 0.0], [20.0, 0.0], [0.0, 0.0]]])  # (B=1, T=3, N=2); sensor 1 never observed
    preds = last_value(inputs, fallback=np.array([55.0, 44.0]), horizon=4)
    assert preds.shape == (1, 4, 2, 1)
    np.testing.assert_array_equal(preds[0, :, 0, 0], 20.0)  # last non-zero reading
    np.testing.assert_array_equal(preds[0, :, 1, 0], 44.0)  # fallback: the sensor's training mean
