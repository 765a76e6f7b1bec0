"""The traffic artifact contract: the manifest's `preprocessing` section and the graph's names.

Export writes `Preprocessing` from the checkpoint; the service parses it back once per loaded version. The
JSON layout is the one manifests have always had (tests/golden/repository/traffic/1/manifest.json).
"""

from __future__ import annotations

import math
from functools import cached_property

from pydantic import ConfigDict, Field, field_validator

from families.manifest import PreprocessingSection
from families.statistics import TrainingStatistic
from families.traffic.preprocessing import (
    FEATURE_DAY_OF_WEEK,
    FEATURE_SPEED,
    FEATURE_TIME_OF_DAY,
    NULL_VALUE,
    Scaler,
    feature_names,
)

TASK = "traffic-forecast"
GRAPH = "model"  # the one graph, x -> y
INPUT = "x"  # (batch, input_steps, num_sensors, len(features)) float32
OUTPUT = "y"  # (batch, horizon, num_sensors, 1) float32 mph
# Names of the drift statistics in `training_statistics` (service/families/traffic/quality.py observes the same ones).
STAT_MISSING = "missing_fraction"
STAT_SPEED = "mean_speed"


class Preprocessing(PreprocessingSection):
    """What the service needs to turn readings + timestamps into `x`: the sensor set and its order, the
    scaler, the feature channels, the time grid."""

    # Frozen: the section is parsed once per version and shared by every request (cached_property below).
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    sensor_ids: list[str] = Field(min_length=1)
    scaler: Scaler
    features: list[str]  # channel order of x: speed first, then the time features present
    step_seconds: int = Field(gt=0)
    input_steps: int = Field(gt=0)
    horizon: int = Field(gt=0)
    null_value: float = NULL_VALUE
    unit: str = "mph"
    input_layout: str = "x: (batch, input_steps, num_sensors, len(features)) float32; speed z-scored"
    output_layout: str = "y: (batch, horizon, num_sensors, 1) float32 mph"
    # Drift reference (STAT_MISSING, STAT_SPEED); absent from exports of checkpoints that lack the data summary.
    training_statistics: dict[str, TrainingStatistic] | None = None

    @field_validator("features")
    @classmethod
    def _known_channels(cls, value: list[str]) -> list[str]:
        # The channels build_features makes, in its order (training wrote the list with feature_names).
        if value != feature_names(FEATURE_TIME_OF_DAY in value, FEATURE_DAY_OF_WEEK in value):
            raise ValueError(f"unsupported traffic features {value}: {FEATURE_SPEED!r}, then optionally "
                             f"{FEATURE_TIME_OF_DAY!r}, then optionally {FEATURE_DAY_OF_WEEK!r}")
        return value


    @property
    def use_time_of_day(self) -> bool:
        return FEATURE_TIME_OF_DAY in self.features

    @property
    def use_day_of_week(self) -> bool:
        return FEATURE_DAY_OF_WEEK in self.features

    @cached_property
    def index(self) -> dict[str, int]:
        """Sensor id -> its position in the model's sensor order."""
        return {s: i for i, s in enumerate(self.sensor_ids)}


def training_statistics(missing_fraction: float, scaler_mean: float, scaler_std: float) -> dict[str, TrainingStatistic]:
    """`training_statistics` from what training records: the missing share of the speed table and the scaler,
    whose mean/std count missing zeros as readings (so the non-missing moments are the scaler's divided by the
    present share)."""
    present = 1.0 - missing_fraction
    mean = scaler_mean / present if present > 0 else 0.0
    second = (scaler_std ** 2 + scaler_mean ** 2) / present if present > 0 else 0.0
    return {STAT_MISSING: TrainingStatistic.share(missing_fraction),
            STAT_SPEED: TrainingStatistic(mean=mean, std=math.sqrt(max(second - mean * mean, 0.0)))}
