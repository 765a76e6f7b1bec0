"""NetCDF samples (issue 15 item 13): real NetCDF-4 (h5netcdf) and NetCDF-3 (scipy.io) files with packed
values and fill values are CF-decoded by the loader; stacked NPZ files are validated like single samples."""

from __future__ import annotations

from pathlib import Path

import h5netcdf
import numpy as np
import pytest
from scipy.io import netcdf_file

from families.water.preprocessing import MODALITIES, STATIC_NAMES
from training.water import data as water_data

T, H, W, TV = 2, 4, 3, 5
SCALE, OFFSET, FILL = 0.01, 10.0, -32767


def _sample(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {m: rng.uniform(0, 50, (T, H, W)) for m in ("precip", "soil", "temp")}
    out.update({m: rng.uniform(0, 5, TV) for m in ("evap", "riverflow")})
    out["static"] = rng.uniform(0, 100, len(STATIC_NAMES))
    return out


def _pack(values: np.ndarray) -> np.ndarray:
    """int16 packed values with the first element set to the fill value."""
    packed = np.round((values - OFFSET) / SCALE).astype(np.int16)
    packed.flat[0] = FILL
    return packed


def _expected(values: np.ndarray) -> np.ndarray:
    out = (np.round((values - OFFSET) / SCALE) * SCALE + OFFSET).astype(np.float32)
    out.flat[0] = np.nan
    return out


DIMS = {"precip": ("t", "y", "x"), "soil": ("t", "y", "x"), "temp": ("t", "y", "x"), "evap": ("tv",),
        "riverflow": ("tv",), "static": ("attr",)}


def write_nc4(path: Path, sample: dict[str, np.ndarray]) -> None:
    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"t": T, "y": H, "x": W, "tv": TV, "attr": len(STATIC_NAMES)}
        for name, values in sample.items():
            if name == "precip":  # packed int16 with scale/offset and a fill value
                var = f.create_variable(name, DIMS[name], np.int16, fillvalue=np.int16(FILL))
                var[...] = _pack(values)
                var.attrs["scale_factor"], var.attrs["add_offset"] = SCALE, OFFSET
            elif name == "evap":  # float with a missing_value
                var = f.create_variable(name, DIMS[name], np.float32)
                stored = values.astype(np.float32)
                stored[1] = -999.0
                var[...] = stored
                var.attrs["missing_value"] = np.float32(-999.0)
            else:
                f.create_variable(name, DIMS[name], np.float32, data=values.astype(np.float32))


def write_nc3(path: Path, sample: dict[str, np.ndarray]) -> None:
    with netcdf_file(path, "w", version=2) as f:  # 64-bit offset NetCDF-3
        for dim, size in {"t": T, "y": H, "x": W, "tv": TV, "attr": len(STATIC_NAMES)}.items():
            f.createDimension(dim, size)
        for name, values in sample.items():
            if name in ("soil", "riverflow"):
                var = f.createVariable(name, "i2", DIMS[name])
                var[:] = _pack(values)
                var._FillValue, var.scale_factor, var.add_offset = np.int16(FILL), SCALE, OFFSET
            else:
                var = f.createVariable(name, "f4", DIMS[name])
                var[:] = values.astype(np.float32)


def test_netcdf4_cf_decoding(tmp_path: Path) -> None:
    sample = _sample(0)
    write_nc4(tmp_path / "a.nc", sample)
    decoded = water_data.read_netcdf(tmp_path / "a.nc")
    np.testing.assert_allclose(decoded["precip"], _expected(sample["precip"]), rtol=1e-6, atol=1e-4)
    assert np.isnan(decoded["precip"][0, 0, 0]) and np.isfinite(decoded["precip"]).sum() == T * H * W - 1
    assert np.isnan(decoded["evap"][1]) and np.isfinite(decoded["evap"]).sum() == TV - 1
    np.testing.assert_allclose(decoded["soil"], sample["soil"].astype(np.float32))
    assert all(v.dtype == np.float32 for v in decoded.values())


def test_netcdf3_cf_decoding(tmp_path: Path) -> None:
    sample = _sample(1)
    write_nc3(tmp_path / "b.nc", sample)
    decoded = water_data.read_netcdf(tmp_path / "b.nc")
    for name in ("soil", "riverflow"):
        np.testing.assert_allclose(decoded[name], _expected(sample[name]), rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(decoded["temp"], sample["temp"].astype(np.float32))


def test_folder_of_mixed_netcdf_and_npz_loads(tmp_path: Path) -> None:
    write_nc4(tmp_path / "s0.nc", _sample(0))
    write_nc3(tmp_path / "s1.nc", _sample(1))
    np.savez(tmp_path / "s2.npz", **{k: v.astype(np.float32) for k, v in _sample(2).items()})
    data = water_data.load(tmp_path)
    assert len(data) == 3 and data.fields["precip"].shape == (3, T, H, W)
    assert np.isnan(data.fields["precip"][0, 0, 0, 0]) and np.isnan(data.fields["soil"][1, 0, 0, 0])
    assert np.isfinite(data.fields["precip"][2]).all()


def test_unreadable_netcdf_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.nc").write_bytes(b"CDF\x02garbage")
    with pytest.raises(ValueError, match="bad.nc"):
        water_data.load(tmp_path)
    (tmp_path / "bad.nc").write_bytes(b"not netcdf at all")
    with pytest.raises(ValueError, match="not a NetCDF-3 or NetCDF-4"):
        water_data.load(tmp_path)


def _stacked(n: int) -> dict[str, np.ndarray]:
    samples = [_sample(i) for i in range(n)]
    return {k: np.stack([s[k] for s in samples]).astype(np.float32) for k in samples[0]}


def test_stacked_npz_validated_like_single_samples(tmp_path: Path) -> None:
    good = _stacked(3)
    np.savez(tmp_path / "good.npz", **good)
    assert len(water_data.load(tmp_path / "good.npz")) == 3
    cases = {
        "missing": ({k: v for k, v in good.items() if k != "temp"}, "missing variables"),
        "static": ({**good, "static": good["static"][:, :5]}, "static must have 11"),
        "grid": ({**good, "soil": good["soil"][:, :, :2]}, "soil has shape"),
        "count": ({**good, "evap": good["evap"][:2]}, "same length"),
        "series": ({**good, "riverflow": good["riverflow"][..., None]}, "1-D series"),
    }
    for name, (arrays, message) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match=message):
            water_data.load(path)
    assert set(MODALITIES) < set(good)


def test_oversized_variables_are_refused_before_decoding(tmp_path: Path) -> None:
    """A header claiming more values than a sample may hold is refused from the header alone: a compressed
    NetCDF-4 variable and a compressed NPZ member of 2^27+ zeros (a few hundred KB on disk)."""
    big = 1 << 14
    nc_path = tmp_path / "bomb.nc"
    with h5netcdf.File(nc_path, "w") as f:
        f.dimensions = {"t": big, "y": big, "x": 1}
        f.create_variable("precip", ("t", "y", "x"), np.float32, chunks=(1024, 1024, 1), compression="gzip")
    with pytest.raises(ValueError, match=r"bomb\.nc: variable 'precip' has 268,435,456 values"):
        water_data.read_netcdf(nc_path)

    npz_path = tmp_path / "bomb.npz"
    np.savez_compressed(npz_path, precip=np.zeros((1 << 27) + 1, np.uint8))
    assert npz_path.stat().st_size < 1_000_000
    assert water_data.npz_shapes(npz_path) == {"precip": ((1 << 27) + 1,)}
    with pytest.raises(ValueError, match=r"bomb\.npz: variable 'precip' has 134,217,729 values"):
        water_data.load(npz_path)
