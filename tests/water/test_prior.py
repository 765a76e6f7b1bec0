"""The gap-filling prior given to the model with `prior_fill` (families.water.preprocessing)."""

from __future__ import annotations

import numpy as np

from families.water.contract import Grid, Normalisation, Preprocessing
from families.water.observed import graph_inputs
from families.water.preprocessing import (
    IMAGE_MODALITIES,
    MODALITIES,
    STATIC_NAMES,
    UNITS,
    VECTOR_MODALITIES,
    NormStats,
    gap_prior,
)
from service.families.water.routes import observe
from service.families.water.schemas import WaterSample


def test_linear_in_time_where_both_sides_are_visible() -> None:
    t = np.arange(6, dtype=np.float32)
    values = np.broadcast_to(2 * t[None, :, None, None] + 1, (1, 6, 3, 3)).copy()
    hidden = np.zeros(values.shape, bool)
    hidden[0, 1:4] = True  # whole frames: only time can fill them
    out = gap_prior(values, hidden, image=True)
    np.testing.assert_allclose(out, values, atol=1e-6)
    hidden[0, 4:] = True  # the last days: constant extrapolation from day 0
    out = gap_prior(values, hidden, image=True)
    assert np.allclose(out[0, 1:], values[0, 0])


def test_spatial_interpolation_then_nearest_then_mean() -> None:
    values = np.tile(np.arange(5, dtype=np.float32)[None, :], (5, 1))[None, None]  # value = column
    hidden = np.zeros(values.shape, bool)
    hidden[0, 0, 1:4, 1:4] = True  # a region in the only frame: left/right neighbours interpolate the ramp
    out = gap_prior(values, hidden, image=True)
    np.testing.assert_allclose(out, values, atol=1e-6)
    hidden = np.ones(values.shape, bool)
    hidden[0, 0, 0, 0] = False  # one visible pixel: row and column interpolation use it
    out = gap_prior(values, hidden, image=True)
    assert np.allclose(out[0, 0, 0, :], 0.0) and np.allclose(out[0, 0, :, 0], 0.0)
    hidden[0, 0, 0, 0] = True  # nothing visible anywhere: the mean (0 in normalised units)
    assert np.all(gap_prior(values, hidden, image=True) == 0)


def test_nearest_pixel_when_row_and_column_have_nothing() -> None:
    values = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    hidden = np.ones(values.shape, bool)
    hidden[0, 0, 3, 3] = False
    out = gap_prior(values, hidden, image=True)
    assert out[0, 0, 0, 0] == 15 and out[0, 0, 3, 3] == 15


def test_series_and_visible_values_unchanged() -> None:
    values = np.array([[0.0, 1, 2, 3, 4, 5]], np.float32)
    hidden = np.array([[True, False, True, True, False, True]])
    out = gap_prior(values, hidden, image=False)
    np.testing.assert_allclose(out, [[1, 1, 2, 3, 4, 4]])


def test_service_sends_the_prior_at_hidden_values() -> None:
    stats = NormStats(mean={m: 0.0 for m in MODALITIES}, std={m: 1.0 for m in MODALITIES},
                      static_mean=np.zeros(11), static_std=np.ones(11))
    pre = Preprocessing(grid=Grid(frames=2, height=4, width=4, patch=2, series_len=4, n_static=11),
                        image_modalities=list(IMAGE_MODALITIES), vector_modalities=list(VECTOR_MODALITIES),
                        static_names=list(STATIC_NAMES), units=UNITS, stats=Normalisation.of(stats), prior_fill=True)
    grid = [[[float(c) for c in range(4)] for _ in range(4)] for _ in range(2)]
    soil = [[row[:] for row in frame] for frame in grid]
    soil[0][0][0] = None  # hides the top-left patch of day 0, which has a visible day only after it: spatial fill
    sample = WaterSample(precip=grid, soil=soil, temp=grid, evap=[1.0, None, 3.0, 4.0], riverflow=[1.0] * 4,
                         static=[0.0] * 11)
    inputs, tokens = graph_inputs([observe(sample, 0, pre.grid)], pre, stats)
    assert tokens["soil"][0, 0, 0, 0] and not tokens["soil"][0, 1].any()
    # Inverse-distance weights of the nearest visible pixels below (column value) and to the right (2).
    np.testing.assert_allclose(inputs["soil"][0, 0, :2, :2], [[1, 5 / 3], [2 / 3, 1.5]], atol=1e-6)
    np.testing.assert_allclose(inputs["soil"][0, 1], np.asarray(grid[1]))
    np.testing.assert_allclose(inputs["evap"][0], [1, 2, 3, 4])
