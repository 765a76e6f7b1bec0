"""Pre/post-processing shared by training and serving for the water family (numpy only).

Normalisation: one mean/std per modality (computed on the training split) plus one per static attribute;
the model works in normalised units, the API in physical units. Masks: a patch (image) or a step (vector)
is hidden from the model when any of its values is missing; only the missing values are filled back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

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
    """Per-modality mean/std (scalars) and per-attribute static mean/std (as JSON: contract.Normalisation)."""

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


def _nearest_along(values: np.ndarray, hidden: np.ndarray, axis: int) -> tuple[np.ndarray, ...]:
    """Nearest visible value before / after each entry along `axis`: (v_prev, d_prev, v_next, d_next);
    a distance is 0 where there is no visible entry on that side."""
    n = values.shape[axis]
    shape = [1] * values.ndim
    shape[axis] = n
    steps = np.arange(n, dtype=np.int32).reshape(shape)
    prev = np.maximum.accumulate(np.where(hidden, np.int32(-1), steps), axis=axis)
    rev = np.flip(np.where(hidden, np.int32(n), steps), axis)
    nxt = np.flip(np.minimum.accumulate(rev, axis=axis), axis)
    v_prev = np.take_along_axis(values, prev.clip(0, n - 1), axis)
    v_next = np.take_along_axis(values, nxt.clip(0, n - 1), axis)
    d_prev = np.where(prev >= 0, steps - prev, 0)
    d_next = np.where(nxt < n, nxt - steps, 0)
    return v_prev, d_prev, v_next, d_next


def gap_prior(values: np.ndarray, hidden: np.ndarray, image: bool) -> np.ndarray:
    """Cheap deterministic fill of the hidden values from the visible ones (normalised units).

    values/hidden: grids [N, T, H, W] or series [N, T_v] (value level, True = hidden). Rule per hidden value:
    linear interpolation in time between the nearest visible days before and after at the same pixel; else
    (grids) spatial interpolation in the same frame: the inverse-distance weighted mean of the nearest
    visible pixels up, down, left and right (or, when the row and column have none, the nearest visible
    pixel); else the nearest visible day (constant extrapolation); else 0, the modality mean. Visible values
    are returned unchanged. The model with `prior_fill` receives this as its hidden input values and
    predicts a correction to it. Used identically in training, evaluation and serving."""
    values = np.asarray(values, dtype=np.float32)
    hidden = np.asarray(hidden, dtype=bool)
    v_prev, d_prev, v_next, d_next = _nearest_along(values, hidden, 1)
    has_prev, has_next = d_prev > 0, d_next > 0
    both = has_prev & has_next
    weight = (d_prev / np.maximum(d_prev + d_next, 1)).astype(np.float32)
    interp = v_prev + weight * (v_next - v_prev)
    one_side = np.where(has_prev, v_prev, np.where(has_next, v_next, np.float32(0.0)))
    fill = np.where(both, interp, one_side)
    if image:
        total = np.zeros(values.shape, np.float32)
        weights = np.zeros(values.shape, np.float32)
        for axis in (2, 3):
            for v_side, d_side in zip(*[iter(_nearest_along(values, hidden, axis))] * 2, strict=True):
                w = np.where(d_side > 0, 1.0 / np.maximum(d_side, 1), 0.0).astype(np.float32)
                total += w * v_side
                weights += w
        spatial = total / np.maximum(weights, 1e-12)
        has_spatial = weights > 0
        # Hidden values with nothing visible in their row and column: the nearest visible pixel of the frame.
        need = (hidden & ~both & ~has_spatial).any(axis=(2, 3)) & ~hidden.all(axis=(2, 3))
        for i, j in zip(*np.nonzero(need), strict=True):
            _, (ri, ci) = ndimage.distance_transform_edt(hidden[i, j], return_indices=True)
            spatial[i, j] = np.where(has_spatial[i, j], spatial[i, j], values[i, j][ri, ci])
            has_spatial[i, j] = True
        fill = np.where(both, interp, np.where(has_spatial, spatial, one_side))
    return np.where(hidden, fill, values).astype(np.float32)


def fill_hidden(normed: np.ndarray, hidden_tokens: np.ndarray, image: bool, patch: int) -> np.ndarray:
    """`gap_prior` of one modality given its token-level hidden mask (grids [N, T, Hp, Wp], series [N, T_v]):
    every value of a hidden patch is filled, as the model with `prior_fill` expects its inputs."""
    return gap_prior(normed, expand_patch_mask(hidden_tokens, patch) if image else hidden_tokens, image)
