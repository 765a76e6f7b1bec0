"""Codec quality (issue 16 item 4; docs/quality.md "Image codec"): bits per pixel of every compression, and
the PSNR of the reconstruction of a sampled fraction of them, both by quality level.

The encoder can decode what it wrote: on a sampled compression (setting `SERVICE_IMAGECODEC_QUALITY_PSNR_FRACTION`) the
compress procedure decodes its own stream in the same job on the version's worker thread, so the check
costs one decode (about the time of the encode) on those compressions only and never touches the event
loop. A failing check is logged and counted as nothing; it never fails the compression.
"""

from __future__ import annotations

import logging
import math
import random
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from families.imagecodec.codec import CodecInfo, CodecModel, Networks, decode

if TYPE_CHECKING:
    from service.families.imagecodec.metrics import ImagecodecMetrics

log = logging.getLogger(__name__)
PSNR_CAP_DB = 100.0  # a lossless reconstruction (mse 0) lands in the +Inf bucket, not at infinity
_LEVEL_IN_NAME = re.compile(r"-q(\d+)$")


def level_of(name: str, quality: int | None) -> str:
    """The level label: `q<N>` from the model name (imagecodec-qN), else from the manifest's training
    `quality`, else "unknown" (bounded: one value per model)."""
    match = _LEVEL_IN_NAME.search(name)
    if match:
        return f"q{match.group(1)}"
    return f"q{quality}" if quality is not None else "unknown"


def psnr_db(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """PSNR of two uint8 images of the same shape, in dB (capped for identical images)."""
    mse = float(np.mean(np.square(original.astype(np.float64) - reconstruction.astype(np.float64))))
    return PSNR_CAP_DB if mse <= 0 else min(10.0 * math.log10(255.0 ** 2 / mse), PSNR_CAP_DB)


@dataclass
class CodecQuality:
    """One version's recorder, made by the plug-in's `prepare` and held in the version's state; `record` runs
    on the version's worker thread (prometheus is thread-safe). No series exists before the first record."""

    metrics: ImagecodecMetrics
    labels: tuple[str, str, str]  # model, version, level
    fraction: float
    rng: random.Random
    lock: threading.Lock

    @classmethod
    def create(cls, metrics: ImagecodecMetrics, model: str, version: str, quality: int | None, fraction: float,
               seed: int | None = None) -> CodecQuality:
        """The recorder of `model` `version`, trained at `quality` (the manifest's), sampling `fraction`."""
        return cls(metrics, (model, version, level_of(model, quality)), fraction, random.Random(seed),
                   threading.Lock())

    def sampled(self) -> bool:
        with self.lock:  # random.Random is not documented as thread-safe
            return self.fraction > 0 and self.rng.random() < self.fraction

    def record(self, image: np.ndarray, stream: bytes, info: CodecInfo, nets: Networks, model: CodecModel) -> None:
        """bpp always; PSNR of the decoded stream when this compression is sampled."""
        self.metrics.bpp.labels(*self.labels).observe(info.bpp)
        if not self.sampled():
            return
        try:
            reconstruction, _ = decode(stream, nets, model)
        except Exception:  # noqa: BLE001 - the check must never fail the compression it measures
            log.warning("codec PSNR self-check of %s v%s failed", *self.labels[:2], exc_info=True)
            return
        self.metrics.psnr.labels(*self.labels).observe(psnr_db(image, reconstruction))
