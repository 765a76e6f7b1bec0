"""Images for training and evaluation.

Default training set: the real photographs bundled with scikit-image (no download). Held-out evaluation
set from different sources: scikit-learn's sample photos (china, flower) and matplotlib's sample photos.
Any folder of PNG/JPEG images (Kodak, CLIC, DIV2K) works with --images DIR.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SKIMAGE_COLOR = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "retina")
SKIMAGE_GRAY = ("camera", "coins", "moon", "brick", "grass", "gravel", "clock")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (np.clip(image.astype(np.float64), 0, 1) * 255).round().astype(np.uint8) if image.max() <= 1 \
            else np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def skimage_photos() -> dict[str, np.ndarray]:
    import skimage.data as data

    photos = {}
    for name in SKIMAGE_COLOR + SKIMAGE_GRAY + ("stereo_motorcycle",):
        try:  # some images live in scikit-image's download cache; use those that are present
            image = getattr(data, name)()
        except Exception:  # noqa: BLE001 - missing optional data files
            continue
        if name == "stereo_motorcycle":
            photos["motorcycle_left"], photos["motorcycle_right"] = _rgb(image[0]), _rgb(image[1])
        else:
            photos[name] = _rgb(image)
    if not photos:
        raise FileNotFoundError("no scikit-image sample photographs are available")
    return photos


def heldout_photos() -> dict[str, np.ndarray]:
    """sklearn's china/flower and matplotlib's sample photographs (a different source from training)."""
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    photos = {Path(f).stem: _rgb(img) for f, img in zip(bunch.filenames, bunch.images, strict=True)}
    try:
        import matplotlib.cbook as cbook
        from PIL import Image

        for name in ("grace_hopper.jpg",):
            with Image.open(cbook.get_sample_data(name, asfileobj=False)) as img:
                photos[Path(name).stem] = _rgb(np.asarray(img.convert("RGB")))
    except (ImportError, OSError, ValueError):
        pass
    return photos


def folder_images(folder: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    images = {}
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            with Image.open(path) as img:
                images[path.stem] = _rgb(np.asarray(img.convert("RGB")))
    if not images:
        raise FileNotFoundError(f"no images in {folder}")
    return images


class RandomCrops:
    """Random crops with horizontal/vertical flips from a list of uint8 images, as float (B, 3, S, S)."""

    def __init__(self, images: list[np.ndarray], crop: int, seed: int = 0) -> None:
        self.images = [img for img in images if min(img.shape[:2]) >= crop]
        if not self.images:
            raise ValueError(f"no image is at least {crop}x{crop}")
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> torch.Tensor:
        out = np.empty((size, self.crop, self.crop, 3), dtype=np.uint8)
        for i in range(size):
            img = self.images[self.rng.integers(len(self.images))]
            top = self.rng.integers(img.shape[0] - self.crop + 1)
            left = self.rng.integers(img.shape[1] - self.crop + 1)
            patch = img[top:top + self.crop, left:left + self.crop]
            if self.rng.random() < 0.5:
                patch = patch[:, ::-1]
            if self.rng.random() < 0.5:
                patch = patch[::-1]
            out[i] = patch
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)
