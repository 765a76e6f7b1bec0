"""The image codec's series: bits per pixel of every compression and the PSNR of a sampled share, by quality
level (bounded: one level per model); and how a rollout compares two versions from them (`ROLLOUT_QUALITY`)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Histogram

from service.plugin import RolloutQuality, RolloutTotals

LEVEL_LABELS = ("model", "version", "level")
BPP_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
PSNR_BUCKETS = (15.0, 20.0, 22.0, 24.0, 26.0, 28.0, 30.0, 32.0, 34.0, 36.0, 38.0, 40.0, 45.0, 50.0)


class ImagecodecMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.bpp = Histogram("quality_codec_bits_per_pixel", "Compressed bits per pixel, by level.", LEVEL_LABELS,
                             buckets=BPP_BUCKETS, registry=r)
        self.psnr = Histogram("quality_codec_psnr_db", "PSNR (dB) of the reconstruction of a sampled fraction of "
                              "compressions, by level.", LEVEL_LABELS, buckets=PSNR_BUCKETS, registry=r)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def rollout_figures(totals: RolloutTotals) -> dict[str, Any]:
    """Mean bits per pixel and mean PSNR of the sampled reconstructions (higher is better)."""
    count = totals.get(("quality_codec_psnr_db_count", ""), 0.0)
    return {"bpp": _ratio(totals.get(("quality_codec_bits_per_pixel_sum", ""), 0.0),
                          totals.get(("quality_codec_bits_per_pixel_count", ""), 0.0)),
            "psnr_db": _ratio(totals.get(("quality_codec_psnr_db_sum", ""), 0.0), count),
            "figure": "psnr_db", "higher_is_better": True, "scored": int(count)}


ROLLOUT_QUALITY = RolloutQuality(
    samples={"quality_codec_bits_per_pixel_sum": None, "quality_codec_bits_per_pixel_count": None,
             "quality_codec_psnr_db_sum": None, "quality_codec_psnr_db_count": None},
    figures=rollout_figures)
