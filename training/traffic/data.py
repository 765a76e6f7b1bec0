"""METR-LA / PEMS-BAY style data: the real file formats, DCRNN windowing, chronological split, scaler.

Files (any N): `<name>.h5` - a pandas DataFrame (index = timestamps, columns = sensor ids, 0 = missing);
`adj_mx.pkl` - pickle of `[sensor_ids, sensor_id_to_ind, adj_mx]` (python 2 pickles: latin1 fallback).

Windows follow DCRNN's `generate_training_data.py`: x offsets -11..0, y offsets 1..12 around an anchor t,
anchors t = 11 .. S-13; the windows (not the series) are split chronologically 70 / 10 / 20 with
`num_test = round(0.2 n)`, `num_train = round(0.7 n)`, `num_val = n - train - test`. The z-score scaler is
fit on the training x channel 0 (all training windows, zeros included), computed exactly from the series
with per-step window counts instead of materialising the (n, 12, N) array.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from families.traffic.preprocessing import Scaler, build_features, feature_names
from training.traffic import synthetic

if TYPE_CHECKING:
    from training.traffic.config import DataConfig

X_OFFSETS = np.arange(-11, 1)
Y_OFFSETS = np.arange(1, 13)
SPLITS = ("train", "val", "test")


def read_speed_h5(path: Path) -> pd.DataFrame:
    """The speed table of a METR-LA style .h5 file; uses PyTables via pandas, or h5py when it is missing."""
    try:
        frame = pd.read_hdf(path)
    except ImportError:
        frame = _read_pandas_fixed_h5(path)
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{path}: expected a DataFrame of speeds, got {type(frame).__name__}")
    if not isinstance(frame.index, pd.DatetimeIndex):
        raise ValueError(f"{path}: the index must be timestamps, got {type(frame.index).__name__}")
    return frame


def _read_pandas_fixed_h5(path: Path) -> pd.DataFrame:
    """Read pandas' "fixed" HDF5 layout (what METR-LA ships) with h5py: one float block, two axes."""
    import h5py

    with h5py.File(path, "r") as handle:
        key = next(iter(handle.keys()))
        group = handle[key]
        if "block0_values" not in group or "block1_values" in group:
            raise ValueError(f"{path}: unsupported HDF5 layout (need one homogeneous block)")
        columns = [c.decode() if isinstance(c, bytes) else str(c) for c in group["axis0"][()]]
        kind = group["axis1"].attrs.get("kind", b"datetime64")
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if not kind.startswith("datetime64"):
            raise ValueError(f"{path}: the index must be timestamps, stored kind is {kind!r}")
        unit = kind[len("datetime64[") : -1] if "[" in kind else "ns"  # older pandas: nanoseconds, no unit
        index = pd.DatetimeIndex(group["axis1"][()].astype(f"datetime64[{unit}]"))
        values = group["block0_values"][()]
        if values.shape != (len(index), len(columns)):
            values = values.T
    return pd.DataFrame(values, index=index, columns=columns)


def read_adjacency(path: Path) -> tuple[list[str], dict[str, int], np.ndarray]:
    """`[sensor_ids, sensor_id_to_ind, adj_mx]` from adj_mx.pkl (latin1 for python 2 pickles)."""
    with Path(path).open("rb") as handle:
        try:
            payload = pickle.load(handle)
        except UnicodeDecodeError:
            handle.seek(0)
            payload = pickle.load(handle, encoding="latin1")
    sensor_ids, id_to_ind, adj = payload
    return [str(s) for s in sensor_ids], {str(k): int(v) for k, v in id_to_ind.items()}, np.asarray(adj, np.float32)


def split_sizes(num_samples: int) -> tuple[int, int, int]:
    num_test = round(num_samples * 0.2)
    num_train = round(num_samples * 0.7)
    return num_train, num_samples - num_test - num_train, num_test


@dataclass
class TrafficData:
    """A speed series with its graph, features and DCRNN window split."""

    speeds: np.ndarray  # (S, N) float32 mph, 0 = missing
    timestamps: np.ndarray  # (S,) datetime64[ns]
    sensor_ids: list[str]
    adjacency: np.ndarray  # (N, N)
    features: np.ndarray  # (S, N, C) float32, scaled speed + time features
    scaler: Scaler
    anchors: dict[str, np.ndarray]  # split -> anchor indices t (last input step)
    use_time_of_day: bool
    use_day_of_week: bool
    source: str

    @property
    def num_nodes(self) -> int:
        return self.speeds.shape[1]

    @property
    def feature_names(self) -> list[str]:
        return feature_names(self.use_time_of_day, self.use_day_of_week)

    def windows(self, split: str, index: np.ndarray | slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """x (B, 12, N, C) scaled features and y (B, 12, N, 1) mph for the chosen anchors of a split."""
        anchors = self.anchors[split] if index is None else self.anchors[split][index]
        x = self.features[anchors[:, None] + X_OFFSETS]
        y = self.speeds[anchors[:, None] + Y_OFFSETS][..., None]
        return x, y

    def description(self) -> dict:
        return {
            "source": self.source,
            "num_steps": int(self.speeds.shape[0]),
            "num_nodes": self.num_nodes,
            "start": str(self.timestamps[0]),
            "end": str(self.timestamps[-1]),
            "windows": {k: int(len(v)) for k, v in self.anchors.items()},
            "missing_fraction": float(np.mean(self.speeds == 0)),
        }


def dcrnn_anchors(num_steps: int) -> dict[str, np.ndarray]:
    anchors = np.arange(-X_OFFSETS.min(), num_steps - Y_OFFSETS.max())
    num_train, num_val, num_test = split_sizes(len(anchors))
    return {
        "train": anchors[:num_train],
        "val": anchors[num_train : num_train + num_val],
        "test": anchors[len(anchors) - num_test :],
    }


def fit_scaler(speeds: np.ndarray, train_anchors: np.ndarray) -> Scaler:
    """Mean/std of x_train[..., 0] exactly as if the training windows were materialised (overlaps counted)."""
    counts = np.zeros(speeds.shape[0], dtype=np.float64)
    np.add.at(counts, (train_anchors[:, None] + X_OFFSETS).ravel(), 1.0)
    row_sum = speeds.sum(axis=1, dtype=np.float64)
    row_sq = np.square(speeds, dtype=np.float64).sum(axis=1)
    total = counts.sum() * speeds.shape[1]
    mean = float(counts @ row_sum / total)
    var = float(counts @ row_sq / total - mean * mean)
    return Scaler(mean=mean, std=float(np.sqrt(max(var, 1e-12))))


def from_frame(
    frame: pd.DataFrame,
    adjacency: np.ndarray,
    sensor_ids: list[str],
    use_time_of_day: bool = True,
    use_day_of_week: bool = False,
    source: str = "",
) -> TrafficData:
    columns = [str(c) for c in frame.columns]
    if columns != sensor_ids:
        # Reorder the table to the graph's sensor order; refuse if the sets differ.
        missing = sorted(set(sensor_ids) - set(columns))
        if missing:
            raise ValueError(f"sensors in the graph but not in the speed table: {missing[:5]}")
        frame = frame.set_axis(columns, axis=1)[sensor_ids]
    speeds = np.nan_to_num(frame.to_numpy(dtype=np.float32), nan=0.0)
    if adjacency.shape != (len(sensor_ids), len(sensor_ids)):
        raise ValueError(f"adjacency {adjacency.shape} does not match {len(sensor_ids)} sensors")
    timestamps = frame.index.to_numpy().astype("datetime64[ns]")
    if np.any(np.diff(timestamps) <= np.timedelta64(0, "ns")):
        raise ValueError("timestamps of the speed table must be strictly increasing")
    anchors = dcrnn_anchors(len(speeds))
    if min(len(a) for a in anchors.values()) == 0:
        raise ValueError(f"series of {len(speeds)} steps is too short for a 70/10/20 split of 12+12 windows")
    scaler = fit_scaler(speeds, anchors["train"])
    features = build_features(speeds, timestamps, scaler, use_time_of_day, use_day_of_week)
    return TrafficData(
        speeds=speeds, timestamps=timestamps, sensor_ids=sensor_ids, adjacency=adjacency, features=features,
        scaler=scaler, anchors=anchors, use_time_of_day=use_time_of_day, use_day_of_week=use_day_of_week,
        source=source,
    )


def load_dataset(
    speed_file: Path,
    adjacency_file: Path,
    use_time_of_day: bool = True,
    use_day_of_week: bool = False,
) -> TrafficData:
    frame = read_speed_h5(Path(speed_file))
    sensor_ids, _, adjacency = read_adjacency(Path(adjacency_file))
    return from_frame(frame, adjacency, sensor_ids, use_time_of_day, use_day_of_week, source=str(speed_file))


def find_files(data_dir: Path) -> tuple[Path, Path]:
    """The .h5 speed file and adj_mx*.pkl in a directory (METR-LA / PEMS-BAY naming)."""
    data_dir = Path(data_dir)
    h5 = sorted(data_dir.glob("*.h5"))
    pkl = sorted(data_dir.glob("adj_mx*.pkl"))
    if len(h5) != 1 or len(pkl) != 1:
        raise FileNotFoundError(f"{data_dir}: need exactly one *.h5 and one adj_mx*.pkl, found {h5 + pkl}")
    return h5[0], pkl[0]


def prepare_data(config: DataConfig, workdir: Path) -> TrafficData:
    """Real files from `config.dir`, or synthetic files generated once under workdir/data and read the same way."""
    if config.source == "files":
        speed_file, adj_file = find_files(Path(str(config.dir)))
    else:
        target = Path(workdir) / "data"
        speed_file, adj_file = target / synthetic.SPEED_FILE, target / synthetic.ADJ_FILE
        stamp = target / "spec.json"
        spec = {"nodes": config.nodes, "days": config.days, "seed": config.seed}
        if not (speed_file.exists() and adj_file.exists() and stamp.exists() and json.loads(stamp.read_text()) == spec):
            synthetic.generate_files(target, num_nodes=config.nodes, num_days=config.days, seed=config.seed)
            stamp.write_text(json.dumps(spec))
    return load_dataset(speed_file, adj_file, config.use_time_of_day, config.use_day_of_week)
