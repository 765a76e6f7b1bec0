"""Synthetic generator (shapes, physical links) and the per-sample file loader."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from families.water.contract import Normalisation
from families.water.preprocessing import MODALITIES, NormStats, expand_patch_mask, patch_mask
from training.water import data as water_data


@pytest.fixture(scope="module")
def synthetic() -> water_data.WaterData:
    return water_data.generate(96, 30, 20, frames=5, series_len=20, seed=3)


def test_shapes_and_determinism(synthetic: water_data.WaterData) -> None:
    assert synthetic.fields["precip"].shape == (96, 5, 30, 20)
    assert synthetic.fields["evap"].shape == (96, 20) and synthetic.static.shape == (96, 11)
    again = water_data.generate(96, 30, 20, seed=3)
    assert all(np.array_equal(again.fields[m], synthetic.fields[m]) for m in MODALITIES)
    assert all(np.isfinite(v).all() for v in synthetic.fields.values())
    assert (synthetic.fields["precip"] >= 0).all() and (synthetic.fields["riverflow"] >= 0).all()


def test_physical_links(synthetic: water_data.WaterData) -> None:
    f, static = synthetic.fields, synthetic.static
    # Soil moisture integrates rain: wetter where it has rained over the grid days.
    rain_total = f["precip"].sum(axis=1).reshape(-1)
    soil_change = (f["soil"][:, -1] - f["soil"][:, 0]).reshape(-1)
    assert np.corrcoef(rain_total, soil_change)[0, 1] > 0.3
    # Temperature lapses with terrain: high catchments are colder (elevation is static attribute 1).
    assert np.corrcoef(static[:, 1], f["temp"].mean(axis=(1, 2, 3)))[0, 1] < -0.2
    # Evaporation follows temperature; river flow follows catchment rain with a lag.
    t_mean = f["temp"].mean(axis=(2, 3))
    assert np.corrcoef(t_mean.ravel(), f["evap"][:, -5:].ravel())[0, 1] > 0.3
    rain_mean = f["precip"].mean(axis=(2, 3))
    flow = f["riverflow"][:, -5:]
    lagged = np.corrcoef(rain_mean[:, :-1].ravel(), (flow[:, 1:] - flow[:, :-1]).ravel())[0, 1]
    assert lagged > 0.2


def test_rain_fields_are_smooth_and_move(synthetic: water_data.WaterData) -> None:
    p = synthetic.fields["precip"]
    neighbour = np.abs(np.diff(p, axis=3)).mean()
    shuffled = np.abs(p - np.roll(p, 7, axis=0)).mean()
    assert neighbour < 0.2 * shuffled
    wet = p.mean(axis=(2, 3)) > 0.5
    assert wet.any()


def test_npz_folder_roundtrip(tmp_path: Path, synthetic: water_data.WaterData) -> None:
    part = synthetic.subset(slice(0, 5))
    part.fields["soil"][1, 0, 0, 0] = np.nan  # missing values travel as NaN
    water_data.save_samples(part, tmp_path / "samples")
    loaded = water_data.load(tmp_path / "samples")
    for m in MODALITIES:
        np.testing.assert_array_equal(loaded.fields[m], part.fields[m])
    np.testing.assert_array_equal(loaded.static, part.static)


def test_netcdf4_hdf5_sample(tmp_path: Path, synthetic: water_data.WaterData) -> None:
    folder = tmp_path / "nc"
    folder.mkdir()
    for i in range(2):
        with h5py.File(folder / f"s{i}.nc", "w") as handle:
            for m in MODALITIES:
                handle[m] = synthetic.fields[m][i]
            handle["static"] = synthetic.static[i]
    loaded = water_data.load(folder)
    np.testing.assert_array_equal(loaded.fields["temp"], synthetic.fields["temp"][:2])


def test_loader_names_bad_files(tmp_path: Path, synthetic: water_data.WaterData) -> None:
    folder = tmp_path / "bad"
    water_data.save_samples(synthetic.subset(slice(0, 2)), folder)
    np.savez(folder / "sample_000001.npz", static=synthetic.static[0],
             **{m: synthetic.fields[m][0] for m in MODALITIES if m != "evap"})
    with pytest.raises(ValueError, match="sample_000001.npz: missing variables \\['evap'\\]"):
        water_data.load(folder)


def test_norm_stats_roundtrip_and_masks(synthetic: water_data.WaterData) -> None:
    stats = NormStats.fit(synthetic.fields, synthetic.static)
    again = Normalisation.model_validate_json(Normalisation.of(stats).model_dump_json()).norm_stats()
    x = synthetic.fields["temp"][:2]
    np.testing.assert_allclose(again.denormalise("temp", again.normalise("temp", x)), x, rtol=1e-5, atol=1e-4)
    missing = np.zeros((5, 30, 20), bool)
    missing[2, 13, 4] = True
    tokens = patch_mask(missing, 10)
    assert tokens.shape == (5, 3, 2) and tokens.sum() == 1 and tokens[2, 1, 0]
    assert expand_patch_mask(tokens, 10)[2, 10:20, 0:10].all() and expand_patch_mask(tokens, 10).sum() == 100
