"""Evaluation helpers: Bjontegaard deltas and the metrics used by the RD table."""

from __future__ import annotations

import math

import numpy as np

from training.imagecodec.evaluate import (
    bd_psnr,
    bd_rate,
    below_range_verdict,
    ms_ssim,
    pillow_codec,
    psnr,
    psnr_at,
    rd_front,
)


def test_bd_rate_sign_and_size() -> None:
    rate = np.array([0.1, 0.2, 0.4, 0.8])
    quality = np.array([26.0, 29.0, 32.0, 35.0])
    assert abs(bd_rate(rate, quality, rate, quality)) < 1e-9
    assert math.isclose(bd_rate(rate, quality, rate * 0.8, quality), -20.0, abs_tol=1e-6)  # 20 % fewer bits
    assert math.isclose(bd_psnr(rate, quality, rate, quality + 0.5), 0.5, abs_tol=1e-6)
    assert math.isnan(bd_rate(rate, quality, rate, quality + 20))  # no PSNR overlap -> undefined


def test_bd_ignores_dominated_points() -> None:
    """A point that spends more bits for less PSNR (a saturated curve) is off the RD front: it must not bend
    the interpolation into nonsense (a cubic fit through it gave -100 %)."""
    rate = np.array([0.1, 0.2, 0.4, 0.8])
    quality = np.array([26.0, 29.0, 32.0, 35.0])
    ours_rate = np.array([0.08, 0.16, 0.32, 0.64])
    ours_quality = np.array([26.0, 29.0, 32.0, 31.5])  # the last point is dominated
    assert rd_front(ours_rate, ours_quality)[0].tolist() == [0.08, 0.16, 0.32]
    assert math.isclose(bd_rate(rate, quality, ours_rate, ours_quality), -20.0, abs_tol=1e-6)


def test_metrics_on_pillow_jpeg() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:128]
    image = np.clip(np.stack([np.sin(xx / 9 + c) * 80 + 128 + yy * 0.3 for c in range(3)], -1)
                    + rng.normal(0, 4, (96, 128, 3)), 0, 255).astype(np.uint8)
    low_bpp, low = pillow_codec(image, "JPEG", 5)
    high_bpp, high = pillow_codec(image, "JPEG", 90)
    assert low_bpp < high_bpp
    assert psnr(image, low) < psnr(image, high)
    assert ms_ssim(image, low) < ms_ssim(image, high) <= 1.0 + 1e-9
    assert ms_ssim(image, image) > 0.999


def test_below_jpeg_range_is_reported_not_interpolated() -> None:
    """Under JPEG's cheapest setting there is no matched PSNR: the point is counted as dominating that setting
    only when it is also better, never extrapolated."""
    curve = [{"bpp": 0.15, "psnr": 24.0}, {"bpp": 0.3, "psnr": 29.0}, {"bpp": 0.6, "psnr": 33.0}]
    assert math.isnan(psnr_at(curve, 0.1))
    assert below_range_verdict(curve, 0.1, 25.0) == "dominates"
    assert below_range_verdict(curve, 0.1, 23.0) == "below"
    assert below_range_verdict(curve, 0.2, 30.0) is None  # inside the range: psnr_at answers
    assert 24.0 < psnr_at(curve, 0.2) < 29.0
