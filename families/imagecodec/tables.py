"""Scale table and integer pmf tables: computed once at export time, shipped in the artifact, and used
unchanged by every encoder and decoder (so no runtime ever recomputes a pmf from floats)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

SCALE_MIN = 0.11
SCALE_MAX = 64.0
SCALE_LEVELS = 64
LOG_SCALE_MIN = np.float32(math.log(SCALE_MIN))
LOG_SCALE_STEP = np.float32((math.log(SCALE_MAX) - math.log(SCALE_MIN)) / (SCALE_LEVELS - 1))
PMF_PRECISION = 20  # integer pmfs sum to 2**20
TAIL_SIGMAS = 6.0  # pmf support is [-L, L] with L = ceil(6 * scale); beyond that an escape symbol


def scale_table() -> np.ndarray:
    return np.exp(LOG_SCALE_MIN + LOG_SCALE_STEP * np.arange(SCALE_LEVELS, dtype=np.float64))


def scale_position(log_scale: np.ndarray) -> np.ndarray:
    """Continuous position of a log-scale on the table (float32; index = rint, clipped)."""
    return (log_scale.astype(np.float32) - LOG_SCALE_MIN) / LOG_SCALE_STEP


def integer_pmf(scale: float) -> np.ndarray:
    """Integer pmf of round(N(0, scale)) on [-L, L] plus a final escape bin; sums to 2**PMF_PRECISION,
    every entry >= 1 so that any symbol stays codable."""
    half = max(1, math.ceil(TAIL_SIGMAS * scale))
    values = np.arange(-half, half + 1, dtype=np.float64)
    cdf = np.array([0.5 * math.erfc(-(v + 0.5) / (scale * math.sqrt(2.0))) for v in values])
    cdf_low = np.array([0.5 * math.erfc(-(v - 0.5) / (scale * math.sqrt(2.0))) for v in values])
    probs = np.clip(cdf - cdf_low, 0.0, None)
    probs = np.append(probs, max(0.0, 1.0 - probs.sum()))
    total = 1 << PMF_PRECISION
    counts = np.floor(probs * (total - probs.size)).astype(np.int64) + 1
    counts[np.argmax(counts)] += total - counts.sum()
    return counts


@dataclass
class PmfTables:
    """Ragged integer pmfs: `pmfs[i]` for scale-table index i (y) and for z channel c."""

    y_pmfs: list[np.ndarray]
    z_pmfs: list[np.ndarray]
    z_mean: np.ndarray  # float32 (N,): z symbols are round(z - z_mean)

    @classmethod
    def build(cls, z_mean: np.ndarray, z_scale: np.ndarray) -> PmfTables:
        y = [integer_pmf(float(s)) for s in scale_table()]
        z = [integer_pmf(float(s)) for s in np.asarray(z_scale, dtype=np.float64)]
        return cls(y, z, np.asarray(z_mean, dtype=np.float32))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        arrays = {f"y{i}": p.astype(np.uint32) for i, p in enumerate(self.y_pmfs)}
        arrays.update({f"z{i}": p.astype(np.uint32) for i, p in enumerate(self.z_pmfs)})
        meta = np.array([SCALE_LEVELS, len(self.z_pmfs), PMF_PRECISION], dtype=np.int64)
        np.savez(buffer, meta=meta, z_mean=self.z_mean, scale_table=scale_table(), **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PmfTables:
        with np.load(io.BytesIO(data)) as npz:
            levels, n_z, precision = (int(v) for v in npz["meta"])
            if levels != SCALE_LEVELS or precision != PMF_PRECISION:
                raise ValueError("pmf tables were built for a different scale table or precision")
            if not np.allclose(npz["scale_table"], scale_table()):
                raise ValueError("pmf tables were built for a different scale table")
            y = [npz[f"y{i}"].astype(np.int64) for i in range(levels)]
            z = [npz[f"z{i}"].astype(np.int64) for i in range(n_z)]
            return cls(y, z, npz["z_mean"].astype(np.float32))
