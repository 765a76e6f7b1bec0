"""Uploads as real cameras and tools write them: EXIF-rotated JPEGs are coded as viewers show them, 16-bit
grey PNGs are scaled to 8 bits (not clipped to white), damaged EXIF does not refuse good pixels."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from families.images import ORIENTATION_TAG
from service.families.imagecodec.routes import read_image

MODEL = SimpleNamespace(max_pixels=512 * 512, max_aspect=64)  # what the size check reads of a CodecModel


def _stored_sideways() -> tuple[np.ndarray, np.ndarray]:
    """(pixels as stored, pixels as shown): a 48x80 (h x w) frame stored rotated, as phones do."""
    rng = np.random.default_rng(0)
    shown = np.zeros((80, 48, 3), np.uint8)
    shown[:20] = (250, 20, 20)  # a red band at the top of the upright picture
    shown[20:] = rng.integers(0, 255, (60, 48, 3))
    return np.ascontiguousarray(np.rot90(shown, k=1)), shown  # orientation 6: rotate 90 degrees clockwise to show


def _jpeg(pixels: np.ndarray, orientation: int | None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION_TAG] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def test_exif_rotated_photograph_is_coded_upright() -> None:
    stored, shown = _stored_sideways()
    upright = read_image(_jpeg(stored, orientation=6), MODEL)
    assert upright.shape == shown.shape  # 80 x 48, not the stored 48 x 80
    assert np.abs(upright[:20].astype(int) - (250, 20, 20)).mean() < 12  # the red band is at the top
    as_stored = read_image(_jpeg(stored, orientation=None), MODEL)
    assert as_stored.shape == stored.shape


@pytest.mark.parametrize("orientation", [1, 0, 9, 65535])  # as stored, and values outside 1-8
def test_other_orientation_values_keep_the_stored_pixels(orientation: int) -> None:
    stored, _ = _stored_sideways()
    assert read_image(_jpeg(stored, orientation), MODEL).shape == stored.shape


def test_damaged_exif_is_ignored() -> None:
    stored, _ = _stored_sideways()
    data = bytearray(_jpeg(stored, orientation=6))
    start = data.find(b"Exif\0\0")
    assert start > 0
    data[start + 6: start + 14] = b"\xff" * 8  # the TIFF header of the EXIF block
    assert read_image(bytes(data), MODEL).shape[2] == 3


def test_16_bit_grey_png_is_scaled_not_clipped() -> None:
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    rgb = read_image(buffer.getvalue(), MODEL)
    assert rgb.shape == (32, 64, 3) and rgb.dtype == np.uint8
    expected = np.rint(ramp / 257.0)
    assert np.abs(rgb[..., 0] - expected).max() <= 1
    assert (rgb[..., 0] == rgb[..., 2]).all() and rgb.mean() < 140  # a ramp, not white
