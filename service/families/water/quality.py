"""Water quality (issue 16 items 3 and 5; docs/quality.md "Water"): input drift and a sampled self-check.

- Drift: every request adds its missing share per modality (`missing_fraction_<modality>`) to the drift
  counters of service/quality/drift.py, beside the training share the manifest ships
  (`preprocessing.training_statistics`, written by export/families/water.py).
- Self-check: on a sampled fraction of requests (setting `SERVICE_WATER_QUALITY_SELFCHECK_FRACTION`) a few percent
  of the visible tokens (whole patches of a grid, steps of a series) are hidden as well, the model
  reconstructs that copy alongside the real request (a second inference, never returned), and the error at
  the hidden values is exported per modality in normalised units (training standard deviations), so that
  modalities compare. Cost: on a sampled request one more inference of the same batch plus the inputs
  (numpy, work pool); averaged over all requests, about `fraction` x one inference.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from families.statistics import TrainingStatistic
from families.water.contract import missing_statistic, output_name
from families.water.observed import ObservedSample
from families.water.preprocessing import IMAGE_MODALITIES, MODALITIES, NormStats, expand_patch_mask, patch_mask
from service.quality.drift import DriftRecorder

if TYPE_CHECKING:
    from service.families.water.metrics import WaterMetrics
    from service.metrics import DriftMetrics

HIDE_FRACTION = 0.05  # of the visible tokens of each modality


@dataclass
class SelfCheck:
    """The copy with extra hidden values: its samples, and per modality the (B, ...) value mask to score."""

    samples: list[ObservedSample]
    scored: dict[str, np.ndarray]


class WaterQuality:
    """One served version's drift counters and self-check sampler (thread-safe: work-pool threads share it)."""

    def __init__(self, metrics: WaterMetrics, drift: DriftMetrics, model: str, version: str,
                 training: dict[str, TrainingStatistic] | None, fraction: float, seed: int | None = None) -> None:
        shipped = {name: stat.model_dump() for name, stat in (training or {}).items()}
        self.drift = DriftRecorder(drift, model, version, shipped)
        self.fraction = fraction
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._m = metrics
        self._labels = (model, version)

    def record_inputs(self, samples: list[ObservedSample]) -> None:
        """Missing share per modality of this request (drift)."""
        for m in MODALITIES:
            missing = sum(int(np.count_nonzero(s.missing[m])) for s in samples)
            total = sum(s.missing[m].size for s in samples)
            self.drift.observe(missing_statistic(m), float(missing), total)

    def sampled(self) -> bool:
        with self._lock:
            return self.fraction > 0 and self._rng.random() < self.fraction

    def plan(self, samples: list[ObservedSample], patch: int) -> SelfCheck | None:
        """The samples with a few percent more hidden, or None when there is nothing visible to hide."""
        with self._lock:
            seed = self._rng.getrandbits(32)
        rng = np.random.default_rng(seed)
        scored: dict[str, np.ndarray] = {}
        copies = [replace(s, missing=dict(s.missing)) for s in samples]
        for m in MODALITIES:
            extra = np.stack([_hide_tokens(s.missing[m], m in IMAGE_MODALITIES, patch, rng) for s in samples])
            for row, copy in enumerate(copies):
                copy.missing[m] = copy.missing[m] | extra[row]
            scored[m] = extra
        return SelfCheck(copies, scored) if any(s.any() for s in scored.values()) else None

    def score(self, check: SelfCheck, outputs: dict[str, np.ndarray], stats: NormStats) -> dict[str, float]:
        """Adds |reconstruction - hidden value| (normalised) per modality to the counters; returns the MAE."""
        mae: dict[str, float] = {}
        for m in MODALITIES:
            mask = check.scored[m]
            points = int(np.count_nonzero(mask))
            if not points:
                continue
            truth = stats.normalise(m, np.stack([s.values[m] for s in check.samples]))
            error = float(np.abs(outputs[output_name(m)].astype(np.float64) - truth)[mask].sum())
            labels = (*self._labels, m)
            self._m.selfcheck_abs_error.labels(*labels).inc(error)
            self._m.selfcheck_points.labels(*labels).inc(points)
            mae[m] = error / points
        return mae


def _hide_tokens(missing: np.ndarray, image: bool, patch: int, rng: np.random.Generator) -> np.ndarray:
    """Value mask of HIDE_FRACTION of the fully visible tokens (at least one while two are visible)."""
    tokens = patch_mask(missing, patch) if image else missing
    visible = np.flatnonzero(~tokens)
    hidden = np.zeros(tokens.size, bool)
    if visible.size >= 2:
        count = max(1, round(HIDE_FRACTION * visible.size))
        hidden[rng.choice(visible, size=count, replace=False)] = True
    hidden = hidden.reshape(tokens.shape)
    return expand_patch_mask(hidden, patch)[..., : missing.shape[-2], : missing.shape[-1]] if image else hidden
