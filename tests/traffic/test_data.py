"""The METR-LA loader on a small generated file: file formats, windows/offsets, split, scaler, features."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from families.traffic.preprocessing import day_of_week, time_of_day
from training.traffic import synthetic
from training.traffic.baselines import HistoricalAverage
from training.traffic.data import _read_pandas_fixed_h5, load_dataset, read_adjacency, split_sizes

NODES, DAYS = 9, 3  # 864 steps -> 841 windows


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return synthetic.generate_files(tmp_path_factory.mktemp("metr"), num_nodes=NODES, num_days=DAYS, seed=3)


def test_files_have_the_published_format(files: tuple[Path, Path]) -> None:
    speed_path, adj_path = files
    frame = pd.read_hdf(speed_path, key="df")
    assert frame.shape == (DAYS * 288, NODES)
    assert isinstance(frame.index, pd.DatetimeIndex)
    assert (np.diff(frame.index.values) == np.timedelta64(5, "m")).all()
    assert 0.05 < float((frame.to_numpy() == 0).mean()) < 0.11  # ~8% zeros = missing
    observed = frame.to_numpy()[frame.to_numpy() > 0]
    assert observed.min() >= 3 and observed.max() <= 80
    with adj_path.open("rb") as handle:
        sensor_ids, id_to_ind, adj = pickle.load(handle)
    assert sensor_ids == list(frame.columns)
    assert id_to_ind == {s: i for i, s in enumerate(sensor_ids)}
    assert adj.shape == (NODES, NODES) and np.allclose(np.diag(adj), 1.0)
    assert ((adj == 0) | (adj >= 0.1)).all()  # Gaussian kernel thresholded at 0.1
    # The h5py reader (used when PyTables is missing) reads the same table.
    pd.testing.assert_frame_equal(_read_pandas_fixed_h5(speed_path), frame, check_freq=False)


def test_python2_pickles_load_with_latin1(tmp_path: Path) -> None:
    path = tmp_path / "adj_mx.pkl"
    # a latin1 byte string (as python 2 pickles store str) that is invalid UTF-8
    payload = b"\x80\x02]q\x00(]q\x01U\x03\xe9abq\x02a}q\x03h\x02K\x00s]q\x04]q\x05G?\xf0\x00\x00\x00\x00\x00\x00aae."
    path.write_bytes(payload)
    sensor_ids, id_to_ind, adj = read_adjacency(path)
    assert sensor_ids == ["\xe9ab"] and id_to_ind == {"\xe9ab": 0} and adj.shape == (1, 1)


def test_windows_offsets_and_split(files: tuple[Path, Path]) -> None:
    data = load_dataset(*files, use_time_of_day=True, use_day_of_week=True)
    steps = DAYS * 288
    total = steps - 23  # anchors 11 .. steps-13
    assert split_sizes(total) == (589, 84, 168)
    train, val, test = (data.anchors[s] for s in ("train", "val", "test"))
    assert train[0] == 11 and len(train) == 589
    assert val[0] == train[-1] + 1 and len(val) == 84
    assert test[0] == val[-1] + 1 and test[-1] == steps - 13 and len(test) == 168
    x, y = data.windows("val", np.array([0, 5]))
    assert x.shape == (2, 12, NODES, 3) and y.shape == (2, 12, NODES, 1)
    t = int(val[5])
    frame = pd.read_hdf(files[0])
    raw = frame.to_numpy()
    # x offsets -11..0 (scaled speed), y offsets 1..12 (mph, unscaled)
    np.testing.assert_allclose(x[1, :, :, 0], (raw[t - 11 : t + 1] - data.scaler.mean) / data.scaler.std, rtol=1e-5)
    np.testing.assert_array_equal(y[1, :, :, 0], raw[t + 1 : t + 13])
    stamps = frame.index.values[t - 11 : t + 1]
    np.testing.assert_allclose(x[1, :, 0, 1], time_of_day(stamps), atol=1e-6)
    np.testing.assert_allclose(x[1, :, 3, 1], x[1, :, 0, 1])  # tiled over sensors
    np.testing.assert_allclose(x[1, :, 0, 2], day_of_week(stamps), atol=1e-6)
    assert x[..., 1].min() >= 0 and x[..., 1].max() < 1


def test_scaler_matches_materialised_training_windows(files: tuple[Path, Path]) -> None:
    data = load_dataset(*files)
    raw = pd.read_hdf(files[0]).to_numpy().astype(np.float64)
    x_train = raw[data.anchors["train"][:, None] + np.arange(-11, 1)]  # (n, 12, N), zeros included
    assert data.scaler.mean == pytest.approx(x_train.mean(), rel=1e-9)
    assert data.scaler.std == pytest.approx(x_train.std(), rel=1e-9)
    assert data.features.shape[-1] == 2  # speed + time of day by default


def test_time_features_known_values() -> None:
    stamps = np.array(["2012-03-05T00:00", "2012-03-05T06:00", "2012-03-11T23:55"], dtype="datetime64[ns]")
    np.testing.assert_allclose(time_of_day(stamps), [0.0, 0.25, 287 / 288])
    np.testing.assert_allclose(day_of_week(stamps), [0.0, 0.0, 6 / 7])  # Monday, Monday, Sunday


def test_historical_average_uses_same_weekday_and_slot(files: tuple[Path, Path]) -> None:
    data = load_dataset(*files)
    history = HistoricalAverage(data)
    t = 100  # a training step: HA of its slot/weekday with a single training day = that day's reading
    pred = history.predict(data.timestamps[np.array([[t]])])[0, 0, :, 0]
    observed = data.speeds[t] != 0
    np.testing.assert_allclose(pred[observed], data.speeds[t][observed], rtol=1e-6)
