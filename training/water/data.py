"""Data for the water family: a physically linked synthetic generator and a per-sample file loader.

Sample format (one file per sample, NPZ or NetCDF-3 / NetCDF-4 with the same variable names; NetCDF
variables are CF-decoded: `_FillValue` / `missing_value` become NaN, `scale_factor` / `add_offset` unpack):
  precip, soil, temp   float32 [T, H, W]   mm/day, m3/m3, degC   (gridded, T days ending on day 0)
  evap, riverflow      float32 [T_v]       mm/day                (catchment series, last T_v days ending on
                                                                  the same day as the grids)
  static               float32 [11]        CAMELS-style attributes in the order of STATIC_NAMES
Missing values are NaN. A dataset is a folder of such files (sorted by name) or one NPZ holding the
stacked arrays with a leading sample axis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from families.water.preprocessing import IMAGE_MODALITIES, MODALITIES, STATIC_NAMES, VECTOR_MODALITIES

SPINUP_DAYS = 15


@dataclass
class WaterData:
    """Stacked samples: fields[m] is [N, T, H, W] (image) or [N, T_v] (vector); static is [N, 11]."""

    fields: dict[str, np.ndarray]
    static: np.ndarray

    def __len__(self) -> int:
        return int(self.static.shape[0])

    def subset(self, index: np.ndarray | slice) -> WaterData:
        return WaterData({m: v[index] for m, v in self.fields.items()}, self.static[index])

    def split(self, n_val: int) -> tuple[WaterData, WaterData]:
        return self.subset(slice(0, len(self) - n_val)), self.subset(slice(len(self) - n_val, len(self)))


def _smooth_bumps(rng: np.random.Generator, n: int, yy: np.ndarray, xx: np.ndarray, count: int,
                  width: tuple[float, float]) -> np.ndarray:
    """Sum of `count` Gaussian bumps with unit height per sample: [n, H, W]."""
    out = np.zeros((n, *yy.shape))
    for _ in range(count):
        cy, cx = rng.uniform(0, 1, (2, n, 1, 1))
        w = rng.uniform(*width, (n, 1, 1))
        amp = rng.uniform(0.3, 1.0, (n, 1, 1))
        out += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * w**2))
    return out


def _storms(rng: np.random.Generator, n: int, days: int, yy: np.ndarray, xx: np.ndarray, aridity: np.ndarray,
            elevation: np.ndarray) -> np.ndarray:
    """Rain [n, days, H, W]: a few smooth storms moving across the grid, enhanced over high terrain."""
    rain = np.zeros((n, days, *yy.shape))
    t_axis = np.arange(days)[None, :, None, None]
    for _ in range(6):
        start = rng.integers(-3, days, (n, 1, 1, 1))
        life = rng.integers(3, 9, (n, 1, 1, 1))
        cy, cx = rng.uniform(-0.2, 1.2, (2, n, 1, 1, 1))
        vy, vx = rng.uniform(-0.15, 0.15, (2, n, 1, 1, 1))
        w = rng.uniform(0.12, 0.3, (n, 1, 1, 1))
        intensity = rng.gamma(2.0, 4.0, (n, 1, 1, 1)) / np.sqrt(aridity[:, None, None, None])
        age = t_axis - start
        active = (age >= 0) & (age < life)
        envelope = np.sin(np.pi * (age + 0.5) / life).clip(0) * active
        py, px = cy + vy * age, cx + vx * age
        dist2 = (yy[None, None] - py) ** 2 + (xx[None, None] - px) ** 2
        rain += intensity * envelope * np.exp(-dist2 / (2 * w**2))
    rain *= 1 + 0.4 * (elevation[:, None] - 100) / 1000
    return np.where(rain < 0.3, 0.0, rain)


def _soil_moisture(rng: np.random.Generator, rain: np.ndarray, yy: np.ndarray, xx: np.ndarray, forest: np.ndarray,
                   decay: np.ndarray, soil_depth: np.ndarray) -> np.ndarray:
    """Soil moisture [n, days, H, W]: integrates rain and decays toward a dry equilibrium."""
    n, days = rain.shape[:2]
    s_eq = 0.08 + 0.1 * forest[:, None, None]
    soil = np.zeros_like(rain)
    state = s_eq + 0.15 * _smooth_bumps(rng, n, yy, xx, 2, (0.2, 0.5))
    for t in range(days):
        state = decay[:, None, None] * state + (1 - decay[:, None, None]) * s_eq
        state = state + 0.012 * rain[:, t] / soil_depth[:, None, None] * (1 - state / 0.55)
        soil[:, t] = state = np.clip(state, 0.02, 0.55)
    return soil


def _temperature(rng: np.random.Generator, rain: np.ndarray, doy0: np.ndarray, latitude: np.ndarray,
                 elevation: np.ndarray) -> np.ndarray:
    """Temperature [n, days, H, W]: seasonal cycle, lapse rate with terrain, latitude, cooling under rain, anomaly."""
    n, days = rain.shape[:2]
    doy = doy0[:, None] + np.arange(days)[None]
    seasonal = 10 * np.sin(2 * np.pi * (doy - 110) / 365)  # [n, days]
    anomaly = np.cumsum(rng.normal(0, 1.0, (n, days)), axis=1) * 0.5
    return (28 - 0.4 * latitude[:, None, None, None] + seasonal[:, :, None, None] + anomaly[:, :, None, None]
            - 6.5 * elevation[:, None] / 1000 - 0.08 * rain)


def _river_flow(r_mean: np.ndarray, s_mean: np.ndarray, runoff_coef: np.ndarray, lag: np.ndarray,
                bfi: np.ndarray) -> np.ndarray:
    """River flow [n, days]: effective rain routed through a gamma-like unit hydrograph, plus baseflow."""
    days = r_mean.shape[1]
    effective = runoff_coef[:, None] * r_mean * (s_mean / 0.3)
    k = np.arange(10)[None]
    kernel = (k + 1) ** 2 * np.exp(-(k + 1) / lag[:, None] * 1.5)
    kernel /= kernel.sum(axis=1, keepdims=True)
    quick = np.zeros_like(effective)
    for j in range(10):
        quick[:, j:] += kernel[:, j : j + 1] * effective[:, : days - j]
    base = np.zeros_like(effective)
    store = bfi * 2.0
    for t in range(days):
        store = 0.97 * store + 0.03 * bfi * r_mean[:, t] * 2
        base[:, t] = store
    return (1 - bfi[:, None]) * quick + base


def _generate_chunk(rng: np.random.Generator, n: int, height: int, width: int, frames: int,
                    series_len: int) -> dict[str, np.ndarray]:
    # The random draws happen in one fixed order (parameters, terrain, storms, soil, temperature, noise):
    # a seed gives the same data as before the generator was split into parts.
    days = SPINUP_DAYS + series_len
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")

    # Catchment parameters; most of them are also exposed as static attributes.
    area = rng.uniform(200, 5000, n)
    aridity = rng.uniform(0.3, 2.0, n)
    forest = rng.uniform(0.0, 0.9, n)
    soil_depth = rng.uniform(0.5, 2.0, n)
    bfi = rng.uniform(0.1, 0.7, n)
    lag = rng.uniform(1.0, 4.0, n)
    runoff_coef = rng.uniform(0.2, 0.7, n)
    decay = rng.uniform(0.75, 0.95, n)
    latitude = rng.uniform(30, 60, n)
    doy0 = rng.uniform(0, 365, n)

    elevation = 100 + rng.uniform(100, 500, (n, 1, 1)) + 1500 * _smooth_bumps(rng, n, yy, xx, 3, (0.15, 0.4))
    gy, gx = np.gradient(elevation, axis=(1, 2))
    slope = np.sqrt(gx**2 + gy**2).mean(axis=(1, 2)) / 100.0
    rain = _storms(rng, n, days, yy, xx, aridity, elevation)
    soil = _soil_moisture(rng, rain, yy, xx, forest, decay, soil_depth)
    temp = _temperature(rng, rain, doy0, latitude, elevation)

    # Catchment series: evaporation from temperature and soil; river flow routed from effective rain.
    t_mean, s_mean, r_mean = temp.mean(axis=(2, 3)), soil.mean(axis=(2, 3)), rain.mean(axis=(2, 3))
    evap = (0.15 * np.clip(t_mean + 5, 0, None) * s_mean / (s_mean + 0.12) * (0.7 + 0.5 * forest[:, None]))
    flow = _river_flow(r_mean, s_mean, runoff_coef, lag, bfi)

    noise = lambda shape, scale: rng.normal(0, scale, shape)  # noqa: E731 - measurement noise
    grids = slice(days - frames, days)
    out = {
        "precip": np.clip(rain[:, grids] + noise((n, frames, height, width), 0.05), 0, None),
        "soil": soil[:, grids] + noise((n, frames, height, width), 0.002),
        "temp": temp[:, grids] + noise((n, frames, height, width), 0.1),
        "evap": np.clip(evap[:, -series_len:] + noise((n, series_len), 0.02), 0, None),
        "riverflow": np.clip(flow[:, -series_len:] + noise((n, series_len), 0.02), 0, None),
    }
    static = np.stack([area, elevation.mean(axis=(1, 2)), slope, aridity, forest, soil_depth, bfi, lag,
                       runoff_coef, decay, latitude], axis=1)
    out["static"] = static
    return {k: v.astype(np.float32) for k, v in out.items()}


def generate(n: int, height: int, width: int, frames: int = 5, series_len: int = 20, seed: int = 0,
             chunk: int = 128) -> WaterData:
    """`n` synthetic samples with the shapes of the spec; deterministic for a given seed."""
    if frames > series_len:
        raise ValueError("the gridded frames must lie inside the series window (frames <= series_len)")
    rng = np.random.default_rng(seed)
    parts = [_generate_chunk(rng, min(chunk, n - i), height, width, frames, series_len) for i in range(0, n, chunk)]
    fields = {m: np.concatenate([p[m] for p in parts]) for m in MODALITIES}
    return WaterData(fields, np.concatenate([p["static"] for p in parts]))


def save_samples(data: WaterData, folder: Path) -> list[Path]:
    """Write one NPZ per sample in the documented format."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(len(data)):
        path = folder / f"sample_{i:06d}.npz"
        np.savez(path, static=data.static[i], **{m: data.fields[m][i] for m in MODALITIES})
        paths.append(path)
    return paths


SAMPLE_KEYS: tuple[str, ...] = (*MODALITIES, "static")
SAMPLE_SUFFIXES: frozenset[str] = frozenset({".npz", ".nc", ".nc4", ".h5"})
_CDF3_MAGIC = (b"CDF\x01", b"CDF\x02")  # classic and 64-bit offset; scipy.io reads both
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


# Bounds checked from the files' headers before any array is decoded (a hostile or corrupt header can claim
# terabytes; compressed NetCDF-4 / NPZ data can expand far beyond the file size).
MAX_VALUES_PER_VARIABLE = 1 << 27  # 128M values (512 MB as float32): ~7 years of a 290x180 daily grid


def _bound_shape(shape: tuple[int, ...], name: str, path: Path) -> None:
    count = int(np.prod(shape, dtype=np.float64)) if shape else 1
    if count > MAX_VALUES_PER_VARIABLE:
        raise ValueError(f"{path}: variable {name!r} has {count:,} values (shape {tuple(shape)}), more than the "
                         f"{MAX_VALUES_PER_VARIABLE:,} a sample may hold")


def _bound_file(path: Path) -> None:
    """Uncompressed formats (NetCDF-3) hold at most ~8 bytes per value: the file size bounds the work."""
    size = path.stat().st_size
    limit = 8 * MAX_VALUES_PER_VARIABLE * len(SAMPLE_KEYS)
    if size > limit:
        raise ValueError(f"{path}: {size:,} bytes, more than the {limit:,} a sample file may have")


def npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Array shapes of an NPZ from the .npy headers of its members, without decompressing the data."""
    import zipfile

    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as handle:
                    major, _ = np.lib.format.read_magic(handle)
                    read_header = np.lib.format.read_array_header_1_0 if major == 1 else \
                        np.lib.format.read_array_header_2_0
                    shape, _, _ = read_header(handle, max_header_size=10_000)
                shapes[member[:-4]] = tuple(shape)
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ValueError(f"{path}: unreadable NPZ file ({exc})") from exc
    return shapes


def _bound_npz(path: Path) -> None:
    for name, shape in npz_shapes(path).items():
        _bound_shape(shape, name, path)


def cf_decode(raw: np.ndarray, attrs: Mapping[str, Any], name: str, path: Path) -> np.ndarray:
    """CF decoding of one variable: `_FillValue` / `missing_value` -> NaN, then raw * scale_factor +
    add_offset, as float32 (the file's packed integers or floats)."""
    attrs = {k: np.asarray(v) for k, v in attrs.items()}
    raw = np.asarray(raw)
    missing = np.zeros(raw.shape, bool)
    for key in ("_FillValue", "missing_value"):
        if key in attrs:
            for value in np.ravel(attrs[key]):
                missing |= np.isnan(raw) if np.isnan(value) else raw == value
    try:
        values = raw.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: variable {name!r} is not numeric ({raw.dtype})") from exc
    if "scale_factor" in attrs:
        values = values * float(np.ravel(attrs["scale_factor"])[0])
    if "add_offset" in attrs:
        values = values + float(np.ravel(attrs["add_offset"])[0])
    values[missing] = np.nan
    return values.astype(np.float32)


def _read_netcdf3(path: Path) -> dict[str, np.ndarray]:
    from scipy.io import netcdf_file

    _bound_file(path)  # scipy reads every variable at open: bound it by the file size first
    # maskandscale off: the CF decoding is ours, shared with NetCDF-4. mmap off: the file closes here.
    with netcdf_file(path, "r", mmap=False, maskandscale=False) as handle:
        return {k: cf_decode(handle.variables[k].data, handle.variables[k]._attributes, k, path)
                for k in SAMPLE_KEYS if k in handle.variables}


def _read_netcdf4(path: Path) -> dict[str, np.ndarray]:
    import h5netcdf

    # phony_dims: plain HDF5 files (no NetCDF dimension scales) read too.
    with h5netcdf.File(path, "r", phony_dims="sort") as handle:
        for k in SAMPLE_KEYS:
            if k in handle.variables:
                _bound_shape(tuple(handle.variables[k].shape), k, path)
        return {k: cf_decode(handle.variables[k][...], dict(handle.variables[k].attrs), k, path)
                for k in SAMPLE_KEYS if k in handle.variables}


def read_netcdf(path: Path) -> dict[str, np.ndarray]:
    """The sample variables of a NetCDF-3 or NetCDF-4/HDF5 file, CF-decoded (see `cf_decode`)."""
    with path.open("rb") as handle:
        magic = handle.read(8)
    try:
        if magic[:4] in _CDF3_MAGIC:
            return _read_netcdf3(path)
        if magic == _HDF5_MAGIC:
            return _read_netcdf4(path)
    except (OSError, ValueError, TypeError) as exc:
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path}: unreadable NetCDF file ({exc})") from exc
    if magic[:4] == b"CDF\x05":
        raise ValueError(f"{path}: NetCDF-5 (CDF5) is not supported; convert it to NetCDF-4 (nccopy -k nc4)")
    raise ValueError(f"{path}: not a NetCDF-3 or NetCDF-4/HDF5 file")


def _read_sample(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":
        _bound_npz(path)
        with np.load(path) as archive:
            return {k: np.asarray(archive[k], dtype=np.float32) for k in SAMPLE_KEYS if k in archive}
    if path.suffix in SAMPLE_SUFFIXES:
        return read_netcdf(path)
    raise ValueError(f"{path}: unsupported sample file (expected .npz or NetCDF .nc)")


def _check_sample(sample: dict[str, np.ndarray], path: Path) -> None:
    missing = [k for k in (*MODALITIES, "static") if k not in sample]
    if missing:
        raise ValueError(f"{path}: missing variables {missing}")
    grid_shape = sample[IMAGE_MODALITIES[0]].shape
    for m in IMAGE_MODALITIES:
        if sample[m].ndim != 3 or sample[m].shape != grid_shape:
            raise ValueError(f"{path}: {m} has shape {sample[m].shape}, expected [T, H, W] = {grid_shape}")
    for m in VECTOR_MODALITIES:
        if sample[m].ndim != 1:
            raise ValueError(f"{path}: {m} must be a 1-D series, got shape {sample[m].shape}")
    if sample["static"].shape != (len(STATIC_NAMES),):
        raise ValueError(f"{path}: static must have {len(STATIC_NAMES)} values, got {sample['static'].shape}")


def _check_stacked(arrays: dict[str, np.ndarray], path: Path) -> None:
    """A stacked NPZ passes the per-sample checks for its first sample, with one sample count for all."""
    missing = [k for k in SAMPLE_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing variables {missing}")
    counts = {k: v.shape[0] if v.ndim else 0 for k, v in arrays.items()}
    if len(set(counts.values())) != 1 or counts["static"] == 0:
        raise ValueError(f"{path}: stacked arrays need one leading sample axis of the same length > 0, got {counts}")
    _check_sample({k: v[0] for k, v in arrays.items()}, path)


def load(path: Path) -> WaterData:
    """Load a folder of per-sample files (NPZ / NetCDF), or one stacked NPZ; all validated the same way."""
    if path.is_file():
        if path.suffix != ".npz":
            raise ValueError(f"{path}: a single file must be a stacked .npz; put NetCDF samples in a folder")
        _bound_npz(path)
        with np.load(path) as archive:
            arrays = {k: np.asarray(archive[k], np.float32) for k in SAMPLE_KEYS if k in archive}
        _check_stacked(arrays, path)
        return WaterData({m: arrays[m] for m in MODALITIES}, arrays["static"])
    files = sorted(p for p in path.iterdir() if p.suffix in SAMPLE_SUFFIXES)
    if not files:
        raise ValueError(f"{path}: no .npz/.nc sample files")
    samples = []
    for file in files:
        sample = _read_sample(file)
        _check_sample(sample, file)
        samples.append(sample)
    for file, sample in zip(files, samples, strict=True):
        for key in SAMPLE_KEYS:
            if sample[key].shape != samples[0][key].shape:
                raise ValueError(f"{file}: {key} shape {sample[key].shape} differs from {samples[0][key].shape}")
    return WaterData({m: np.stack([s[m] for s in samples]) for m in MODALITIES},
                     np.stack([s["static"] for s in samples]))
