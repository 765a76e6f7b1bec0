"""Traffic feature construction shared by training and serving (one definition, imported by both).

Features per step and sensor, in this channel order:
  0. speed, z-scored with the training scaler (zeros = missing are scaled too, as the published baselines do)
  1. time of day: fraction of the day in [0, 1) (DCRNN's definition), tiled over sensors      [optional]
  2. day of week: weekday / 7 (Monday = 0)                                                  [optional]
Timestamps are the sensors' local wall-clock times (METR-LA's index is naive local time).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

STEP_SECONDS = 300
# The wall-clock times a window and its forecast may span. datetime64[ns] (the features' type) only spans
# 1678-2262 and wraps silently outside it; this documented window keeps well inside it.
MIN_TIMESTAMP = datetime(1970, 1, 1)
MAX_TIMESTAMP = datetime(2200, 1, 1)
NULL_VALUE = 0.0
FEATURE_SPEED = "speed"
FEATURE_TIME_OF_DAY = "time_of_day"
FEATURE_DAY_OF_WEEK = "day_of_week"


def feature_names(use_time_of_day: bool, use_day_of_week: bool) -> list[str]:
    names = [FEATURE_SPEED]
    if use_time_of_day:
        names.append(FEATURE_TIME_OF_DAY)
    if use_day_of_week:
        names.append(FEATURE_DAY_OF_WEEK)
    return names


def time_of_day(timestamps: np.ndarray) -> np.ndarray:
    """Fraction of the day in [0, 1) for datetime64 timestamps (any shape)."""
    ts = np.asarray(timestamps).astype("datetime64[ns]")
    return ((ts - ts.astype("datetime64[D]")) / np.timedelta64(1, "D")).astype(np.float64)


def day_of_week(timestamps: np.ndarray) -> np.ndarray:
    """weekday / 7 with Monday = 0 (1970-01-01 was a Thursday)."""
    days = np.asarray(timestamps).astype("datetime64[D]").astype(np.int64)
    return ((days + 3) % 7).astype(np.float64) / 7.0


@dataclass(frozen=True)
class Scaler:
    """z-score scaler for the speed channel."""

    mean: float
    std: float

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (values - self.mean) / self.std

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return values * self.std + self.mean


def build_features(
    speeds: np.ndarray,
    timestamps: np.ndarray,
    scaler: Scaler,
    use_time_of_day: bool = True,
    use_day_of_week: bool = False,
) -> np.ndarray:
    """speeds (..., T, N) in mph (0 = missing), timestamps (..., T) -> features (..., T, N, C) float32."""
    speeds = np.asarray(speeds, dtype=np.float64)
    timestamps = np.asarray(timestamps)
    if speeds.shape[:-1] != timestamps.shape:
        raise ValueError(f"speeds {speeds.shape} and timestamps {timestamps.shape} disagree on the time axis")
    channels = [scaler.transform(speeds)]
    if use_time_of_day:
        channels.append(np.broadcast_to(time_of_day(timestamps)[..., None], speeds.shape))
    if use_day_of_week:
        channels.append(np.broadcast_to(day_of_week(timestamps)[..., None], speeds.shape))
    return np.stack(channels, axis=-1).astype(np.float32)
