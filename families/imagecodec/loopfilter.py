"""Adaptive loop filter: a 3x3 cross-channel linear (Wiener) filter fitted by the encoder, sent in the stream.

The encoder runs the synthesis on its own y_hat (what the decoder will see), fits by least squares the filter
that maps that reconstruction to the original (each output channel = a bias + 27 weights over the 3x3
neighbourhood of all three channels), stores the 84 coefficients as float16 (168 bytes) and keeps them only
when the PSNR gain pays for those bytes (`worth_sending`). The decoder applies them after the synthesis. Like
the adaptive loop filter of VVC, it corrects what the networks get systematically wrong on one image: the
shipped model, trained on photographs half of which are grey, desaturates colour (a green photograph came
back 17-28 levels off per channel), which no quantisation step can fix.
"""

from __future__ import annotations

import numpy as np

TAPS = 3  # neighbourhood side
FEATURES = 3 * TAPS * TAPS + 1  # per output channel: 27 weights and a bias
FILTER_BYTES = 3 * FEATURES * 2  # float16 coefficients
MAX_COEFFICIENT = 64.0  # |c| above this is no filter a fit makes: the stream is corrupted
RIDGE = 1e-6  # relative to the mean diagonal: keeps the normal equations solvable on flat images
STRIP_ROWS = 128  # rows per accumulation strip (bounds the feature matrix's memory on large images)
DB_PER_BPP = 20.0  # the filter is sent when it gains more than this many dB per bit per pixel it costs


def _neighbourhood(padded: np.ndarray, row0: int, rows: int, width: int) -> np.ndarray:
    """(rows * width, 28) features of image rows row0.. from the edge-padded (3, H + 2, W + 2) image."""
    cols = [padded[:, row0 + dy: row0 + dy + rows, dx: dx + width] for dy in range(TAPS) for dx in range(TAPS)]
    stacked = np.concatenate(cols, axis=0).reshape(3 * TAPS * TAPS, rows * width)
    return np.concatenate([stacked, np.ones((1, rows * width), np.float32)], axis=0).T


def _pad(image: np.ndarray) -> np.ndarray:
    return np.pad(image, ((0, 0), (1, 1), (1, 1)), mode="edge")


def fit(reconstruction: np.ndarray, original: np.ndarray) -> np.ndarray:
    """float32 (3, H, W) reconstruction and original in [0, 1] -> float16 (3, 28) coefficients."""
    _, height, width = reconstruction.shape
    padded = _pad(reconstruction.astype(np.float32))
    gram = np.zeros((FEATURES, FEATURES))
    cross = np.zeros((FEATURES, 3))
    for row0 in range(0, height, STRIP_ROWS):
        rows = min(STRIP_ROWS, height - row0)
        features = _neighbourhood(padded, row0, rows, width).astype(np.float64)
        target = original[:, row0:row0 + rows].reshape(3, -1).T.astype(np.float64)
        gram += features.T @ features
        cross += features.T @ target
    gram += np.eye(FEATURES) * RIDGE * np.trace(gram) / FEATURES
    coefficients = np.linalg.solve(gram, cross).T
    return np.clip(coefficients, -MAX_COEFFICIENT, MAX_COEFFICIENT).astype(np.float16)


def apply(reconstruction: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """float32 (3, H, W) -> filtered float32 (3, H, W) (not clipped)."""
    _, height, width = reconstruction.shape
    weights = coefficients.astype(np.float32)
    padded = _pad(reconstruction.astype(np.float32))
    out = np.empty_like(reconstruction, dtype=np.float32)
    out[:] = weights[:, -1].reshape(3, 1, 1)
    for k, (dy, dx) in enumerate((dy, dx) for dy in range(TAPS) for dx in range(TAPS)):
        shifted = padded[:, dy: dy + height, dx: dx + width].reshape(3, -1)
        out += (weights[:, 3 * k: 3 * k + 3] @ shifted).reshape(3, height, width)
    return out


def _to_levels(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0)


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((_to_levels(a) - _to_levels(b)) ** 2))


def worth_sending(original: np.ndarray, plain: np.ndarray, filtered: np.ndarray) -> bool:
    """The filter's PSNR gain on the 8-bit images exceeds DB_PER_BPP per bit per pixel it costs."""
    before, after = _mse(original, plain), _mse(original, filtered)
    if after >= before:
        return False
    gain_db = 10.0 * np.log10(before / max(after, 1e-12))
    cost_bpp = 8.0 * FILTER_BYTES / (original.shape[1] * original.shape[2])
    return bool(gain_db > DB_PER_BPP * cost_bpp)


def to_bytes(coefficients: np.ndarray) -> bytes:
    return coefficients.astype("<f2").tobytes()


def from_bytes(data: bytes) -> np.ndarray | None:
    """The stream's filter substream -> coefficients, or None when it carries none; ValueError when it is
    neither empty nor a valid filter (wrong length, a non-finite or out-of-range coefficient)."""
    if not data:
        return None
    if len(data) != FILTER_BYTES:
        raise ValueError(f"filter substream has {len(data)} bytes, expected 0 or {FILTER_BYTES}")
    coefficients = np.frombuffer(data, dtype="<f2").reshape(3, FEATURES)
    if not np.all(np.isfinite(coefficients)) or np.abs(coefficients).max() > MAX_COEFFICIENT:
        raise ValueError("filter substream holds a non-finite or out-of-range coefficient")
    return coefficients
