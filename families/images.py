"""Pixels of an uploaded picture as viewers show them, as uint8 RGB: shared by every family that reads photos
(weld's photos, the image codec's uploads), so training and serving agree.

- Cameras and phones store pixels sideways with an EXIF orientation tag; viewers (and the Hugging Face image
  loaders) turn them upright, so do we. A transposition keeps the area and the aspect ratio, so size checks
  made on the stored header still hold. Damaged EXIF is ignored: it is metadata, the pixels may be fine.
- 16-bit grey PNGs (Pillow modes I;16* and I) are scaled to 8 bits: Pillow's own conversion clips them, which
  turns most of the picture white.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

ORIENTATION_TAG = 0x0112  # EXIF Orientation: 1 as stored, 2-8 mirrored and/or rotated
_SIXTEEN_BIT_GREY = ("I", "I;16", "I;16B", "I;16L")


def upright(img: Image.Image) -> Image.Image:
    """`img` turned as its EXIF orientation says (itself when it has none, or a damaged one)."""
    from PIL import ImageOps

    try:
        orientation = img.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - Pillow raises many types on malformed EXIF
        return img
    return ImageOps.exif_transpose(img) if orientation in range(2, 9) else img


def upright_rgb(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB of `img` as viewers show it. Decodes the pixels: errors of damaged data propagate."""
    img = upright(img)
    if img.mode in _SIXTEEN_BIT_GREY:
        grey = np.rint(np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)
