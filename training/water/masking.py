"""Token-level masks (True = hidden) for training and evaluation.

Scenarios (per sample, each modality drawn independently unless stated):
  random75  75% of the patches (image) / steps (vector) hidden, as in MAE training.
  days      a contiguous block of days is missing: 2 of the T frames of each grid, 40% of each series.
  region    one rectangle of patches (about half the rows x half the columns) is missing in every frame of
            all three grids (a region without observations); the series stay complete.
"""

from __future__ import annotations

import numpy as np

from families.water.preprocessing import IMAGE_MODALITIES, MODALITIES, VECTOR_MODALITIES
from training.water.config import WaterModelConfig

SCENARIOS: tuple[str, ...] = ("random75", "days", "region")


def random_mask(rng: np.random.Generator, batch: int, n: int, ratio: float) -> np.ndarray:
    hidden = int(round(ratio * n))
    order = rng.random((batch, n)).argsort(axis=1)
    return order < hidden


def block_mask(rng: np.random.Generator, batch: int, length: int, block: int) -> np.ndarray:
    """[batch, length]: one contiguous block of `block` entries hidden per row."""
    start = rng.integers(0, length - block + 1, batch)[:, None]
    steps = np.arange(length)[None]
    return (steps >= start) & (steps < start + block)


def days_image_mask(rng: np.random.Generator, batch: int, cfg: WaterModelConfig, days: int) -> np.ndarray:
    hp, wp = cfg.grid_patches
    frames = block_mask(rng, batch, cfg.frames, days)
    return np.broadcast_to(frames[:, :, None, None], (batch, cfg.frames, hp, wp)).reshape(batch, -1)


def region_image_mask(rng: np.random.Generator, batch: int, cfg: WaterModelConfig) -> np.ndarray:
    hp, wp = cfg.grid_patches
    rows = block_mask(rng, batch, hp, max(1, hp // 2))
    cols = block_mask(rng, batch, wp, max(1, wp // 2))
    region = rows[:, :, None] & cols[:, None, :]
    return np.broadcast_to(region[:, None], (batch, cfg.frames, hp, wp)).reshape(batch, -1)


def scenario_masks(name: str, rng: np.random.Generator, batch: int, cfg: WaterModelConfig) -> dict[str, np.ndarray]:
    if name == "random75":
        return {m: random_mask(rng, batch, cfg.tokens(m), 0.75) for m in MODALITIES}
    if name == "days":
        days = max(1, round(0.4 * cfg.frames))
        out = {m: days_image_mask(rng, batch, cfg, days) for m in IMAGE_MODALITIES}
        out.update({m: block_mask(rng, batch, cfg.series_len, max(1, round(0.4 * cfg.series_len)))
                    for m in VECTOR_MODALITIES})
        return out
    if name == "region":
        region = region_image_mask(rng, batch, cfg)
        out = {m: region.copy() for m in IMAGE_MODALITIES}
        out.update({m: np.zeros((batch, cfg.series_len), bool) for m in VECTOR_MODALITIES})
        return out
    raise ValueError(f"unknown mask scenario {name!r}; expected one of {SCENARIOS}")


def training_masks(rng: np.random.Generator, batch: int, cfg: WaterModelConfig) -> dict[str, np.ndarray]:
    """Masks of cfg.mask_schedule: "random" = MAE random masks at cfg.mask_ratio (the spec); "mixed" = random
    masks, missing days and missing regions per sample, so the model also learns to bridge contiguous gaps."""
    random = {m: random_mask(rng, batch, cfg.tokens(m), cfg.mask_ratio) for m in MODALITIES}
    if cfg.mask_schedule == "random":
        return random
    if cfg.mask_schedule != "mixed":
        raise ValueError(f"unknown mask_schedule {cfg.mask_schedule!r}; expected 'random' or 'mixed'")
    days = scenario_masks("days", rng, batch, cfg)
    region = scenario_masks("region", rng, batch, cfg)
    kind = rng.choice(3, size=batch, p=[0.3, 0.4, 0.3])
    out = {}
    for m in MODALITIES:
        region_m = region[m] if m in IMAGE_MODALITIES else random[m]
        out[m] = np.where((kind == 0)[:, None], random[m], np.where((kind == 1)[:, None], days[m], region_m))
    return out
