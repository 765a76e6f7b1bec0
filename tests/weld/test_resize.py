"""Photos and video frames keep their aspect ratio (issue 15 item 9): shorter side to the target, then the
centre crop, as the Hugging Face processors do; parameters stored before the switch keep the plain resize."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from families.weld.contract import Preprocessing
from families.weld.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessParams,
    decode_photo,
    decode_video,
    shorter_side_size,
)
from training.weld.synthetic import write_avi

SIZE = 45
WIDE_W, WIDE_H = 200, 90  # the dataset's 2000x900 photos, scaled by 1/10


def _scene(width: int, height: int) -> np.ndarray:
    """Grey, a white disc of radius 0.4 * height in the centre, and red bars at the far left and right."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.full((height, width, 3), 96, np.uint8)
    disc = (xx - (width - 1) / 2) ** 2 + (yy - (height - 1) / 2) ** 2 <= (0.4 * height) ** 2
    rgb[disc] = 255
    bar = width // 8
    rgb[:, :bar] = rgb[:, -bar:] = (255, 0, 0)
    return rgb


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")  # lossless: the test measures geometry, not JPEG noise
    return buffer.getvalue()


def _rgb(chw: np.ndarray) -> np.ndarray:
    """Undo the ImageNet normalisation: (3, S, S) -> (S, S, 3) in 0..255."""
    mean, std = np.asarray(IMAGENET_MEAN)[:, None, None], np.asarray(IMAGENET_STD)[:, None, None]
    return ((chw * std + mean) * 255).transpose(1, 2, 0)


def _disc_extent(rgb: np.ndarray) -> tuple[int, int]:
    """(width, height) in pixels of the white disc."""
    white = (rgb > 200).all(axis=-1)
    cols, rows = np.flatnonzero(white.any(axis=0)), np.flatnonzero(white.any(axis=1))
    return int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def _red(rgb: np.ndarray) -> int:
    return int(((rgb[..., 0] > 200) & (rgb[..., 1] < 80)).sum())


@pytest.mark.parametrize("width, height, expected", [
    (2000, 900, (497, 224)), (900, 2000, (224, 497)), (224, 224, (224, 224)), (225, 224, (225, 224)),
])
def test_shorter_side_goes_to_the_target(width: int, height: int, expected: tuple[int, int]) -> None:
    assert shorter_side_size(width, height, 224) == expected


def test_wide_photo_is_centre_cropped_not_squashed() -> None:
    params = PreprocessParams(photo_size=SIZE)
    rgb = _rgb(decode_photo(_png(_scene(WIDE_W, WIDE_H)), params))
    assert rgb.shape == (SIZE, SIZE, 3)
    width, height = _disc_extent(rgb)
    assert abs(width - height) <= 1, (width, height)  # still a disc
    assert height == pytest.approx(0.8 * SIZE, abs=2)  # the shorter side went to SIZE: the disc scaled by 1/2
    assert _red(rgb) == 0  # the bars at the far sides are cropped away
    # The crop is the centre: the disc's centre is the image's.
    white = (rgb > 200).all(axis=-1)
    cy, cx = np.argwhere(white).mean(axis=0)
    assert cx == pytest.approx((SIZE - 1) / 2, abs=1) and cy == pytest.approx((SIZE - 1) / 2, abs=1)


def test_tall_photo_crops_top_and_bottom() -> None:
    rgb = _rgb(decode_photo(_png(_scene(WIDE_W, WIDE_H).transpose(1, 0, 2).copy()), PreprocessParams(photo_size=SIZE)))
    width, height = _disc_extent(rgb)
    assert abs(width - height) <= 1 and _red(rgb) == 0


def test_squash_mode_is_what_older_models_were_trained_with() -> None:
    params = PreprocessParams(photo_size=SIZE, resize="squash")
    rgb = _rgb(decode_photo(_png(_scene(WIDE_W, WIDE_H)), params))
    width, height = _disc_extent(rgb)
    assert width < 0.6 * height  # squashed: the disc became a narrow ellipse
    assert _red(rgb) > 0
    with pytest.raises(ValueError, match="resize"):
        PreprocessParams(resize="stretch")


def test_stored_params_without_resize_read_back_as_squash() -> None:
    stored = PreprocessParams(photo_size=SIZE).to_dict()
    assert stored["resize"] == "shorter_side_crop"
    assert PreprocessParams.from_dict(stored).resize == "shorter_side_crop"
    legacy = {k: v for k, v in stored.items() if k != "resize"}
    assert PreprocessParams.from_dict(legacy).resize == "squash"
    assert Preprocessing.model_validate({"params": legacy}).params.resize == "squash"  # an old manifest


def test_wide_video_frames_are_centre_cropped(tmp_path: Path) -> None:
    frames = np.stack([_scene(WIDE_W, WIDE_H)] * 3)
    write_avi(tmp_path / "wide.avi", frames)
    params = PreprocessParams(video_frames=2, video_size=SIZE)
    video = decode_video(tmp_path / "wide.avi", params)
    assert video.shape == (2, 3, SIZE, SIZE)
    rgb = _rgb(video[0])
    width, height = _disc_extent(rgb)
    assert abs(width - height) <= 2, (width, height)  # MJPEG chroma blur: one pixel more of slack
    assert _red(rgb) == 0


def test_exif_rotated_photo_is_read_upright() -> None:
    """A phone stores the upright scene sideways with EXIF orientation 6: the model sees what viewers show (the
    wide scene cropped at its centre, as an upright PNG of it gives), not the stored, tall pixels."""
    from families.images import ORIENTATION_TAG

    upright = _scene(WIDE_W, WIDE_H)
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # rotate 90 degrees clockwise to show
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "PNG", exif=exif.tobytes())
    params = PreprocessParams(photo_size=SIZE)
    np.testing.assert_allclose(decode_photo(buffer.getvalue(), params), decode_photo(_png(upright), params), atol=1e-6)
