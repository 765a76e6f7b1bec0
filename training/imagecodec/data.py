"""Images for training and evaluation.

Default training set: the real photographs bundled with scikit-image (no download). Held-out evaluation
set from different sources: scikit-learn's sample photos (china, flower) and matplotlib's sample photos.
Any folder of PNG/JPEG images (Kodak, CLIC, DIV2K) works with --images DIR.

The corpus (issue 15): photographs from Debian's desktop-background packages, listed with their licences in
`corpus.json` next to this file and built by `python scripts/build_codec_corpus.py --out DIR` into
`DIR/train/` and `DIR/heldout/`; `corpus_images(DIR, split)` reads one split, `corpus_heldout(DIR)` gives the
held-out photos centre-cropped to Kodak's 768x512 (`centre_crop`). Train on it with `--images DIR/train
--scales 1 0.5 0.25` (random crops of the photo at full size, half and quarter size, flipped).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

SKIMAGE_COLOR = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "retina")
SKIMAGE_GRAY = ("camera", "coins", "moon", "brick", "grass", "gravel", "clock")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}
CORPUS_MANIFEST = Path(__file__).with_name("corpus.json")
CORPUS_SPLITS = ("train", "heldout")
KODAK_SIZE = (768, 512)  # width, height


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


def read_corpus_manifest(path: Path | None = None) -> dict[str, Any]:
    """The corpus manifest: {"packages": {name: version}, "images": [{package, package_version, file, name,
    sha256, licence, author, width, height, split, reason}, ...], "excluded": [...]}."""
    return json.loads(Path(path or CORPUS_MANIFEST).read_text())


def corpus_entries(split: str, manifest: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    if split not in CORPUS_SPLITS:
        raise ValueError(f"split must be one of {CORPUS_SPLITS}, got {split!r}")
    return [e for e in (manifest or read_corpus_manifest())["images"] if e["split"] == split]


def corpus_images(folder: Path, split: str = "train", manifest: Path | None = None) -> dict[str, np.ndarray]:
    """One split of a corpus folder built by scripts/build_codec_corpus.py, by file stem. The manifest:
    `manifest`, else the folder's own corpus.json, else the committed one."""
    from PIL import Image

    folder = Path(folder)
    if manifest is None:
        manifest = folder / "corpus.json" if (folder / "corpus.json").exists() else CORPUS_MANIFEST
    entries = corpus_entries(split, read_corpus_manifest(manifest))
    missing = [e["name"] for e in entries if not (folder / split / e["name"]).exists()]
    if missing or not entries:
        raise FileNotFoundError(f"{folder / split}: {len(missing)} of {len(entries)} corpus images missing "
                                f"({', '.join(missing[:3])}...); build it with scripts/build_codec_corpus.py")
    images = {}
    for entry in entries:
        with Image.open(folder / split / entry["name"]) as img:
            images[Path(entry["name"]).stem] = _rgb(np.asarray(img.convert("RGB")))
    return images


def centre_crop(image: np.ndarray, size: tuple[int, int] = KODAK_SIZE) -> np.ndarray:
    """Downscale (keeping the aspect ratio) to the smallest size that still covers `size` = (width, height),
    when the image is larger, then take the centre. For 3:2 and wider photos that is "short side 512"."""
    from PIL import Image

    width, height = size
    h, w = image.shape[:2]
    if w < width or h < height:
        raise ValueError(f"a {w}x{h} image cannot be centre-cropped to {width}x{height}")
    scale = max(width / w, height / h)
    if scale < 1:
        new = (max(width, round(w * scale)), max(height, round(h * scale)))
        image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(new, Image.LANCZOS))
        h, w = image.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    return np.ascontiguousarray(image[top:top + height, left:left + width])


def corpus_heldout(folder: Path, manifest: Path | None = None,
                   size: tuple[int, int] = KODAK_SIZE) -> dict[str, np.ndarray]:
    """The corpus's held-out photographs, each centre-cropped to `size` (Kodak's 768x512)."""
    return {name: centre_crop(img, size) for name, img in corpus_images(folder, "heldout", manifest).items()}


def _downscaled(image: np.ndarray, scale: float) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(new, Image.LANCZOS))


class RandomCrops:
    """Random crops with horizontal/vertical flips from a list of uint8 images, as float (B, 3, S, S).

    `scales`: each image is also offered downscaled by these factors (e.g. (1, 0.5, 0.25): a crop sees the
    photo at full, half or quarter size, chosen uniformly among the sizes at least `crop` on each side);
    the default (1,) crops the images as they are."""

    def __init__(self, images: list[np.ndarray], crop: int, seed: int = 0,
                 scales: Sequence[float] = (1.0,)) -> None:
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise ValueError(f"scales must be in (0, 1], got {tuple(scales)!r}")
        pyramids = []
        for img in images:
            versions = [img if s == 1 else _downscaled(img, s) for s in scales]
            versions = [v for v in versions if min(v.shape[:2]) >= crop]
            if versions:
                pyramids.append(versions)
        if not pyramids:
            raise ValueError(f"no image is at least {crop}x{crop}")
        self.pyramids = pyramids
        self.images = [versions[0] for versions in pyramids]
        self.crop = crop
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> torch.Tensor:
        out = np.empty((size, self.crop, self.crop, 3), dtype=np.uint8)
        for i in range(size):
            versions = self.pyramids[self.rng.integers(len(self.pyramids))]
            img = versions[self.rng.integers(len(versions))] if len(versions) > 1 else versions[0]
            top = self.rng.integers(img.shape[0] - self.crop + 1)
            left = self.rng.integers(img.shape[1] - self.crop + 1)
            patch = img[top:top + self.crop, left:left + self.crop]
            if self.rng.random() < 0.5:
                patch = patch[:, ::-1]
            if self.rng.random() < 0.5:
                patch = patch[::-1]
            out[i] = patch
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)
