"""Observed samples (physical units, gaps marked) and the graph inputs made from them (numpy only).

The service builds an `ObservedSample` per sample of a request; its self-check hides a few more values of a
copy. Both reach the graph through `graph_inputs`, so the copy is prepared exactly like the request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from families.water.contract import STATIC_INPUT, Preprocessing, mask_input
from families.water.preprocessing import IMAGE_MODALITIES, MODALITIES, NormStats, fill_hidden, patch_mask


@dataclass
class ObservedSample:
    """One sample as observed: values in physical units (float64, NaN where missing), the value-level
    missing masks (NaN or marked missing by the client), and the static attributes."""

    values: dict[str, np.ndarray]
    missing: dict[str, np.ndarray]
    static: np.ndarray

    def has_gaps(self) -> bool:
        return any(self.missing[m].any() for m in MODALITIES)


def graph_inputs(samples: list[ObservedSample], pre: Preprocessing,
                 stats: NormStats) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(graph inputs, token masks): normalised fields whose hidden values hold the gap-filling prior (with
    `prior_fill`, else the mean), the token masks (a patch / step is hidden when any of its values is
    missing), and the normalised static attributes."""
    inputs: dict[str, np.ndarray] = {}
    tokens: dict[str, np.ndarray] = {}
    for m in MODALITIES:
        missing = np.stack([s.missing[m] for s in samples])
        values = np.stack([s.values[m] for s in samples])
        normed = stats.normalise(m, np.where(missing, stats.mean[m], values))
        tokens[m] = patch_mask(missing, pre.grid.patch) if m in IMAGE_MODALITIES else missing
        if pre.prior_fill:
            normed = fill_hidden(normed, tokens[m], m in IMAGE_MODALITIES, pre.grid.patch)
        inputs[m] = normed.astype(np.float32)
        inputs[mask_input(m)] = tokens[m]
    inputs[STATIC_INPUT] = stats.normalise_static(np.stack([s.static for s in samples])).astype(np.float32)
    return inputs, tokens
