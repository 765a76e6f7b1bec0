"""Reference forecasters scored by the same metric code: last value and historical average.

- Last value: the most recent non-missing reading of each sensor in the input window, repeated for all 12
  steps (a sensor with no reading in the window falls back to its training mean).
- Historical average (the seasonal baseline of the DCRNN paper): the mean non-missing speed of each sensor at
  the same weekday and 5-minute slot over the training period; slots never observed fall back to the same
  slot on any day, then to the sensor mean.
"""

from __future__ import annotations

import numpy as np

from families.traffic.preprocessing import STEP_SECONDS
from training.traffic.data import X_OFFSETS, Y_OFFSETS, TrafficData

SLOTS_PER_DAY = 86400 // STEP_SECONDS


def sensor_means(data: TrafficData) -> np.ndarray:
    train_end = int(data.anchors["train"][-1]) + 1
    values = data.speeds[:train_end]
    observed = values != 0
    return np.where(observed.any(0), values.sum(0) / np.maximum(observed.sum(0), 1), data.scaler.mean)


def last_value(inputs: np.ndarray, fallback: np.ndarray, horizon: int = len(Y_OFFSETS)) -> np.ndarray:
    """inputs (B, T, N) mph with zeros missing -> (B, horizon, N, 1)."""
    observed = inputs != 0
    # index of the last observed step per (B, N); T-1-argmax over the reversed time axis
    last_index = inputs.shape[1] - 1 - np.argmax(observed[:, ::-1], axis=1)
    last = np.take_along_axis(inputs, last_index[:, None, :], axis=1)[:, 0]
    last = np.where(observed.any(axis=1), last, fallback[None, :])
    return np.repeat(last[:, None, :, None], horizon, axis=1).astype(np.float32)


def _slots(timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ts = timestamps.astype("datetime64[s]").astype(np.int64)
    slot = (ts % 86400) // STEP_SECONDS
    weekday = ((ts // 86400) + 3) % 7
    return weekday, slot


class HistoricalAverage:
    def __init__(self, data: TrafficData) -> None:
        train_end = int(data.anchors["train"][-1]) + 1  # steps seen by training inputs
        values = data.speeds[:train_end].astype(np.float64)
        weekday, slot = _slots(data.timestamps[:train_end])
        key = weekday * SLOTS_PER_DAY + slot
        observed = (values != 0).astype(np.float64)
        sums = np.zeros((7 * SLOTS_PER_DAY, values.shape[1]))
        counts = np.zeros_like(sums)
        np.add.at(sums, key, values)
        np.add.at(counts, key, observed)
        slot_sums = sums.reshape(7, SLOTS_PER_DAY, -1).sum(0)
        slot_counts = counts.reshape(7, SLOTS_PER_DAY, -1).sum(0)
        means = sensor_means(data)
        by_slot = np.where(slot_counts > 0, slot_sums / np.maximum(slot_counts, 1), means[None])
        table = np.where(counts > 0, sums / np.maximum(counts, 1), np.tile(by_slot, (7, 1)))
        self.table = table.astype(np.float32)  # (7 * slots, N)

    def predict(self, timestamps: np.ndarray) -> np.ndarray:
        """timestamps (B, H) of the targets -> (B, H, N, 1)."""
        weekday, slot = _slots(timestamps)
        return self.table[weekday * SLOTS_PER_DAY + slot][..., None]


def baseline_predictions(data: TrafficData, split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"last_value": (preds, labels), "historical_average": (preds, labels)} for a split."""
    anchors = data.anchors[split]
    labels = data.speeds[anchors[:, None] + Y_OFFSETS][..., None]
    inputs = data.speeds[anchors[:, None] + X_OFFSETS]
    history = HistoricalAverage(data)
    return {
        "last_value": (last_value(inputs, sensor_means(data)), labels),
        "historical_average": (history.predict(data.timestamps[anchors[:, None] + Y_OFFSETS]), labels),
    }
