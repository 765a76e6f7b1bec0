"""The water artifact contract: the manifest's `preprocessing` section and the tensor names of the graph.

Export (export/families/water.py) writes `Preprocessing`; the service parses it back with the same class
(`Manifest.preprocessing_as`). The layout is the one every water manifest so far has: `grid`, the modality and
static names, `units`, the normalisation `stats`, `prior_fill` (absent before the gap-filling prior: False) and
`training_statistics` (absent before drift signals: then left out, not written as null).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from families.manifest import PreprocessingSection
from families.statistics import TrainingStatistic
from families.water.preprocessing import IMAGE_MODALITIES, MODALITIES, STATIC_NAMES, VECTOR_MODALITIES, NormStats

MODEL_GRAPH = "model"  # the one graph: full-size normalised fields + token masks -> completed fields
STATIC_INPUT = "static"
MISSING_STATISTIC_PREFIX = "missing_fraction_"


def mask_input(modality: str) -> str:
    """The graph input holding a modality's token mask (True = hidden patch / step)."""
    return f"{modality}_mask"


def output_name(modality: str) -> str:
    """The graph output holding a modality's completed field (normalised)."""
    return f"{modality}_out"


def missing_statistic(modality: str) -> str:
    """The drift statistic of a modality: the share of its values that are missing."""
    return f"{MISSING_STATISTIC_PREFIX}{modality}"


class Grid(BaseModel):
    """Sizes of one sample: grids [frames, height, width] cut into patch x patch tokens, series [series_len]."""

    model_config = ConfigDict(extra="forbid")

    height: int = Field(gt=0)
    width: int = Field(gt=0)
    patch: int = Field(gt=0)
    frames: int = Field(gt=0)
    series_len: int = Field(gt=0)
    n_static: int = Field(gt=0)

    def shape(self, modality: str) -> tuple[int, ...]:
        """Value shape of one sample's modality."""
        return (self.frames, self.height, self.width) if modality in IMAGE_MODALITIES else (self.series_len,)

    def token_shape(self, modality: str) -> tuple[int, ...]:
        """Token shape of one sample's modality: patches [T, H/p, W/p] or steps [T_v]."""
        if modality in IMAGE_MODALITIES:
            return (self.frames, self.height // self.patch, self.width // self.patch)
        return (self.series_len,)


class Normalisation(BaseModel):
    """`NormStats` as JSON (manifest and checkpoint): per-modality mean/std, per-attribute static mean/std."""

    model_config = ConfigDict(extra="forbid")

    mean: dict[str, float]
    std: dict[str, float]
    static_mean: list[float]
    static_std: list[float]

    @classmethod
    def of(cls, stats: NormStats) -> Normalisation:
        return cls(mean={k: float(v) for k, v in stats.mean.items()}, std={k: float(v) for k, v in stats.std.items()},
                   static_mean=[float(v) for v in stats.static_mean], static_std=[float(v) for v in stats.static_std])

    def norm_stats(self) -> NormStats:
        return NormStats(mean=dict(self.mean), std=dict(self.std),
                         static_mean=np.asarray(self.static_mean, dtype=np.float64),
                         static_std=np.asarray(self.static_std, dtype=np.float64))


def missing_share_statistics(missing: dict[str, float]) -> dict[str, TrainingStatistic]:
    """`training_statistics` from the training split's missing share per modality."""
    return {missing_statistic(m): TrainingStatistic.share(p) for m, p in missing.items()}


class Preprocessing(PreprocessingSection):
    """What the service needs to check requests, (de)normalise and fill: the manifest's `preprocessing`."""

    model_config = ConfigDict(extra="forbid")

    grid: Grid
    image_modalities: list[str]
    vector_modalities: list[str]
    static_names: list[str]
    units: dict[str, str]
    stats: Normalisation
    # The graph expects the gap-filling prior (preprocessing.gap_prior) at hidden values, not the mean.
    prior_fill: bool = False
    # The training split's missing share per modality (drift reference); older checkpoints lack it.
    training_statistics: dict[str, TrainingStatistic] | None = None

    @model_validator(mode="after")
    def _fits_this_code(self) -> Preprocessing:
        # The graph's inputs are named after the modalities: a version made for others cannot be served.
        if (tuple(self.image_modalities), tuple(self.vector_modalities)) != (IMAGE_MODALITIES, VECTOR_MODALITIES):
            raise ValueError(f"modalities {self.image_modalities} + {self.vector_modalities} are not this code's "
                             f"{list(IMAGE_MODALITIES)} + {list(VECTOR_MODALITIES)}")
        if set(self.stats.mean) != set(MODALITIES) or set(self.stats.std) != set(MODALITIES):
            raise ValueError(f"stats must give a mean and std for each of {list(MODALITIES)}")
        n_static = self.grid.n_static
        if n_static > len(STATIC_NAMES) or not len(self.stats.static_mean) == len(self.stats.static_std) == n_static:
            raise ValueError(f"stats must give {self.grid.n_static} static means and stds "
                             f"(at most {len(STATIC_NAMES)})")
        if self.grid.height % self.grid.patch or self.grid.width % self.grid.patch:
            raise ValueError(f"grid {self.grid.height}x{self.grid.width} is not divisible by patch {self.grid.patch}")
        return self

