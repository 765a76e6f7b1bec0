"""Pre/post-processing shared by training and serving for the water family (numpy only).

Normalisation: one mean/std per modality (computed on the training split) plus one per static attribute;
the model works in normalised units, the API in physical units. Masks: a patch (image) or a step (vector)
is hidden from the model when any of its values is missing; only the missing values are filled back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

IMAGE_MODALITIES: tuple[str, ...] = ("precip", "soil", "temp")
VECTOR_MODALITIES: tuple[str, ...] = ("evap", "riverflow")
MODALITIES: tuple[str, ...] = IMAGE_MODALITIES + VECTOR_MODALITIES
UNITS: dict[str, str] = {"precip": "mm/day", "soil": "m3/m3", "temp": "degC", "evap": "mm/day",
                         "riverflow": "mm/day"}
STATIC_NAMES: tuple[str, ...] = (
    "area_km2", "mean_elevation_m", "mean_slope", "aridity", "forest_fraction", "soil_depth_m",
    "baseflow_index", "routing_lag_days", "runoff_coefficient", "soil_decay", "latitude_deg",
)
MIN_STD = 1e-6


@dataclass
class NormStats:
    """Per-modality mean/std (scalars) and per-attribute static mean/std."""

    mean: dict[str, float]
    std: dict[str, float]
    static_mean: np.ndarray
    static_std: np.ndarray

    def normalise(self, modality: str, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean[modality]) / self.std[modality]).astype(np.float32)

    def denormalise(self, modality: str, values: np.ndarray) -> np.ndarray:
        return (values * self.std[modality] + self.mean[modality]).astype(np.float32)

    def normalise_static(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.static_mean) / self.static_std).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": {k: float(v) for k, v in self.mean.items()},
            "std": {k: float(v) for k, v in self.std.items()},
            "static_mean": [float(v) for v in self.static_mean],
            "static_std": [float(v) for v in self.static_std],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormStats:
        return cls(
            mean={k: float(v) for k, v in data["mean"].items()},
            std={k: float(v) for k, v in data["std"].items()},
            static_mean=np.asarray(data["static_mean"], dtype=np.float64),
            static_std=np.asarray(data["static_std"], dtype=np.float64),
        )

    @classmethod
    def fit(cls, fields: dict[str, np.ndarray], static: np.ndarray) -> NormStats:
        """Statistics of a training split: `fields[m]` is [N, ...], `static` is [N, n_static]; NaNs ignored."""
        mean = {m: float(np.nanmean(fields[m])) for m in MODALITIES}
        std = {m: max(float(np.nanstd(fields[m])), MIN_STD) for m in MODALITIES}
        return cls(mean=mean, std=std, static_mean=np.nanmean(static, axis=0).astype(np.float64),
                   static_std=np.maximum(np.nanstd(static, axis=0), MIN_STD).astype(np.float64))


def patch_mask(missing: np.ndarray, patch: int) -> np.ndarray:
    """Value mask [..., T, H, W] -> patch mask [..., T, H/p, W/p]: a patch is hidden if any value is missing."""
    *lead, t, h, w = missing.shape
    blocks = missing.reshape(*lead, t, h // patch, patch, w // patch, patch)
    return blocks.any(axis=(-1, -3))


def expand_patch_mask(mask: np.ndarray, patch: int) -> np.ndarray:
    """Patch mask [..., T, Hp, Wp] -> value mask [..., T, Hp*p, Wp*p]."""
    return np.repeat(np.repeat(mask, patch, axis=-2), patch, axis=-1)
