"""Masked metrics exactly as published (DCRNN / Graph WaveNet `util.py`), in numpy and torch.

mask = (target != null_value); mask /= mean(mask); NaNs (all-missing) -> 0; metric = mean(err * mask).
RMSE = sqrt(masked MSE). MAPE is a fraction (x100 for percent in tables). The horizon table reports the
metric on horizon indices 2, 5, 11 (15 / 30 / 60 min) and the average of the 12 per-horizon values (the
Graph WaveNet convention).
"""

from __future__ import annotations

import numpy as np
import torch

from families.traffic.preprocessing import NULL_VALUE

HORIZONS = {"horizon_3": 2, "horizon_6": 5, "horizon_12": 11}


def _mask(labels: np.ndarray, null_value: float) -> np.ndarray:
    mask = (labels != null_value).astype(np.float64) if not np.isnan(null_value) else (~np.isnan(labels)).astype(
        np.float64
    )
    mean = mask.mean() if mask.size else 0.0
    return mask / mean if mean > 0 else np.zeros_like(mask)


def masked_mae(preds: np.ndarray, labels: np.ndarray, null_value: float = NULL_VALUE) -> float:
    mask = _mask(labels, null_value)
    loss = np.nan_to_num(np.abs(preds.astype(np.float64) - labels) * mask)
    return float(loss.mean())


def masked_mse(preds: np.ndarray, labels: np.ndarray, null_value: float = NULL_VALUE) -> float:
    mask = _mask(labels, null_value)
    loss = np.nan_to_num(np.square(preds.astype(np.float64) - labels) * mask)
    return float(loss.mean())


def masked_rmse(preds: np.ndarray, labels: np.ndarray, null_value: float = NULL_VALUE) -> float:
    return float(np.sqrt(masked_mse(preds, labels, null_value)))


def masked_mape(preds: np.ndarray, labels: np.ndarray, null_value: float = NULL_VALUE) -> float:
    mask = _mask(labels, null_value)
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = np.abs(preds.astype(np.float64) - labels) / labels
        return float(np.nan_to_num(loss * mask, nan=0.0, posinf=0.0, neginf=0.0).mean())


def masked_mae_torch(preds: torch.Tensor, labels: torch.Tensor, null_value: float = NULL_VALUE) -> torch.Tensor:
    """Training loss: the same masked MAE, differentiable."""
    mask = (labels != null_value).float()
    mask = mask / mask.mean().clamp_min(1e-12)
    loss = torch.abs(preds - labels) * mask
    return torch.nan_to_num(loss).mean()


def horizon_table(preds: np.ndarray, labels: np.ndarray, null_value: float = NULL_VALUE) -> dict[str, dict[str, float]]:
    """preds/labels (B, 12, N[, 1]) -> {"horizon_3": {"mae", "rmse", "mape"}, ..., "average": {...}}."""
    if preds.shape != labels.shape:
        raise ValueError(f"preds {preds.shape} and labels {labels.shape} differ")
    per_step = [
        {
            "mae": masked_mae(preds[:, h], labels[:, h], null_value),
            "rmse": masked_rmse(preds[:, h], labels[:, h], null_value),
            "mape": masked_mape(preds[:, h], labels[:, h], null_value),
        }
        for h in range(preds.shape[1])
    ]
    table = {name: per_step[index] for name, index in HORIZONS.items() if index < len(per_step)}
    table["average"] = {key: float(np.mean([row[key] for row in per_step])) for key in ("mae", "rmse", "mape")}
    return table
