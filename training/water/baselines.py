"""Simple gap-filling baselines (physical units, value level; `hidden` True = to fill).

climatology  per-position training mean (per pixel for grids, per step for series)
linear_time  linear interpolation in time between the nearest visible days at the same pixel / series,
             constant extrapolation at the ends, climatology where a pixel has no visible day
nearest      nearest visible neighbour in space within the same frame (grids), nearest visible step in
             time (series, which have no spatial axis); climatology where a frame has nothing visible
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from families.water.preprocessing import IMAGE_MODALITIES, MODALITIES

BASELINES: tuple[str, ...] = ("climatology", "linear_time", "nearest")


def climatology_table(fields: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-position means of a training split: grids -> [H, W] (over samples and frames), series -> [T_v]."""
    return {m: np.nanmean(fields[m], axis=(0, 1)) if m in IMAGE_MODALITIES else np.nanmean(fields[m], axis=0)
            for m in MODALITIES}


def fill_climatology(values: np.ndarray, hidden: np.ndarray, clim: np.ndarray) -> np.ndarray:
    return np.where(hidden, np.broadcast_to(clim, values.shape), values)


def fill_linear_time(values: np.ndarray, hidden: np.ndarray, clim: np.ndarray, time_axis: int = 1) -> np.ndarray:
    v = np.moveaxis(values, time_axis, -1).astype(np.float64)
    h = np.moveaxis(hidden, time_axis, -1)
    t = v.shape[-1]
    steps = np.broadcast_to(np.arange(t), v.shape)
    prev = np.maximum.accumulate(np.where(h, -1, steps), axis=-1)
    nxt = np.flip(np.minimum.accumulate(np.flip(np.where(h, t, steps), -1), axis=-1), -1)
    v_prev = np.take_along_axis(v, prev.clip(0, t - 1), -1)
    v_next = np.take_along_axis(v, nxt.clip(0, t - 1), -1)
    has_prev, has_next = prev >= 0, nxt < t
    weight = np.where(has_prev & has_next, (steps - prev) / np.maximum(nxt - prev, 1), 0.0)
    interp = np.where(has_prev & has_next, v_prev + weight * (v_next - v_prev),
                      np.where(has_prev, v_prev, v_next))
    clim_b = np.moveaxis(np.broadcast_to(clim, values.shape), time_axis, -1)
    filled = np.where(has_prev | has_next, interp, clim_b)
    return np.moveaxis(np.where(h, filled, v), -1, time_axis).astype(values.dtype)


def fill_nearest_space(values: np.ndarray, hidden: np.ndarray, clim: np.ndarray) -> np.ndarray:
    """values/hidden [N, T, H, W]."""
    out = values.copy()
    clim_b = np.broadcast_to(clim, values.shape)
    for i in range(values.shape[0]):
        for t in range(values.shape[1]):
            mask = hidden[i, t]
            if not mask.any():
                continue
            if mask.all():
                out[i, t] = clim_b[i, t]
                continue
            _, (ri, ci) = ndimage.distance_transform_edt(mask, return_indices=True)
            out[i, t] = np.where(mask, values[i, t][ri, ci], values[i, t])
    return out


def fill_nearest_time(values: np.ndarray, hidden: np.ndarray, clim: np.ndarray) -> np.ndarray:
    """values/hidden [N, T_v]: nearest visible step (earlier one on ties)."""
    t = values.shape[1]
    steps = np.broadcast_to(np.arange(t), values.shape)
    prev = np.maximum.accumulate(np.where(hidden, -10 * t, steps), axis=1)
    nxt = np.flip(np.minimum.accumulate(np.flip(np.where(hidden, 10 * t, steps), 1), axis=1), 1)
    source = np.where(steps - prev <= nxt - steps, prev, nxt)
    any_visible = (~hidden).any(axis=1, keepdims=True)
    picked = np.take_along_axis(values, source.clip(0, t - 1), 1)
    filled = np.where(any_visible, picked, np.broadcast_to(clim, values.shape))
    return np.where(hidden, filled, values)


def fill(method: str, modality: str, values: np.ndarray, hidden: np.ndarray, clim: np.ndarray) -> np.ndarray:
    if method == "climatology":
        return fill_climatology(values, hidden, clim)
    if method == "linear_time":
        return fill_linear_time(values, hidden, clim)
    if method == "nearest":
        if modality in IMAGE_MODALITIES:
            return fill_nearest_space(values, hidden, clim)
        return fill_nearest_time(values, hidden, clim)
    raise ValueError(f"unknown baseline {method!r}; expected one of {BASELINES}")
