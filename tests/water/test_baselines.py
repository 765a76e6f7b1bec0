"""Gap-filling baselines: fill only hidden values, with the documented rules."""

from __future__ import annotations

import numpy as np

from training.water.baselines import fill, fill_linear_time, fill_nearest_space, fill_nearest_time


def test_linear_time_is_exact_on_linear_trends() -> None:
    t = np.arange(6, dtype=float)
    values = np.broadcast_to(2 * t[None, :, None, None] + 1, (1, 6, 2, 2)).copy()
    hidden = np.zeros_like(values, bool)
    hidden[0, 1:4, 0, 0] = True
    hidden[0, 5, 1, 1] = True  # end: constant extrapolation
    hidden[0, :, 1, 0] = True  # nothing visible at this pixel: climatology
    out = fill_linear_time(values, hidden, np.full((2, 2), -5.0))
    np.testing.assert_allclose(out[0, 1:4, 0, 0], values[0, 1:4, 0, 0])
    assert out[0, 5, 1, 1] == values[0, 4, 1, 1]
    assert (out[0, :, 1, 0] == -5).all()
    np.testing.assert_array_equal(out[~hidden], values[~hidden])


def test_nearest_space_copies_closest_visible_pixel() -> None:
    values = np.arange(25, dtype=float).reshape(1, 1, 5, 5)
    hidden = np.zeros_like(values, bool)
    hidden[0, 0, :, 3:] = True
    out = fill_nearest_space(values, hidden, np.zeros((5, 5)))
    np.testing.assert_array_equal(out[0, 0, :, 3], values[0, 0, :, 2])
    np.testing.assert_array_equal(out[0, 0, :, 4], values[0, 0, :, 2])
    everything = fill_nearest_space(values, np.ones_like(hidden), np.full((5, 5), 7.0))
    assert (everything == 7).all()


def test_nearest_time_for_series() -> None:
    values = np.array([[0.0, 1, 2, 3, 4, 5]])
    hidden = np.array([[True, False, True, True, True, False]])
    out = fill_nearest_time(values, hidden, np.zeros(6))
    np.testing.assert_array_equal(out, [[1, 1, 1, 1, 5, 5]])


def test_climatology_and_dispatch() -> None:
    values = np.ones((2, 4))
    hidden = np.zeros((2, 4), bool)
    hidden[1, 2] = True
    out = fill("climatology", "evap", values, hidden, np.array([9.0, 8, 7, 6]))
    assert out[1, 2] == 7 and (out[~hidden] == 1).all()
