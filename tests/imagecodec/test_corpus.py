"""The codec's photo corpus (issue 15 item 2): the committed manifest, its split, the licence parser of the build
script, the corpus loader on a tiny folder, the Kodak-size centre crop and multi-scale random crops. No
network: the built corpus is checked only where CODEC_CORPUS_DIR names it."""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.imagecodec.config import ImageCodecConfig
from training.imagecodec.data import (
    CORPUS_MANIFEST,
    KODAK_SIZE,
    RandomCrops,
    centre_crop,
    corpus_entries,
    corpus_heldout,
    corpus_images,
    read_corpus_manifest,
)
from training.imagecodec.train import config_from_args, parse_args

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_codec_corpus.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("build_codec_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def manifest() -> dict:
    return read_corpus_manifest()


def test_manifest_is_well_formed(manifest: dict) -> None:
    images = manifest["images"]
    assert len(images) >= 40
    assert len({e["sha256"] for e in images}) == len(images)
    assert len({e["name"] for e in images}) == len(images)
    for entry in images:
        assert set(entry) >= {"package", "package_version", "file", "name", "sha256", "licence", "author", "width",
                              "height", "split", "reason"}
        assert entry["split"] in ("train", "heldout")
        assert entry["licence"] and entry["author"] and entry["reason"].startswith("photograph")
        assert len(entry["sha256"]) == 64 and int(entry["sha256"], 16) >= 0
        assert manifest["packages"][entry["package"]] == entry["package_version"]
        assert not entry["file"].lower().endswith((".svg", ".svgz"))
    train, heldout = corpus_entries("train", manifest), corpus_entries("heldout", manifest)
    assert {e["name"] for e in train}.isdisjoint({e["name"] for e in heldout})
    assert len(train) + len(heldout) == len(images)
    assert 0.18 <= len(heldout) / len(images) <= 0.26
    for entry in heldout:
        assert entry["width"] >= KODAK_SIZE[0] and entry["height"] >= KODAK_SIZE[1], entry["name"]
    with pytest.raises(ValueError, match="split"):
        corpus_entries("test", manifest)


def test_split_is_deterministic(manifest: dict, script) -> None:
    images = copy.deepcopy(manifest["images"])
    for entry in reversed(images):
        entry.pop("split")
    script.assign_splits(images)
    assert {e["name"]: e["split"] for e in images} == {e["name"]: e["split"] for e in manifest["images"]}


def test_licence_from_a_dep5_copyright_file(script) -> None:
    text = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2014 Some Team
License: GPL-2+

Files: 16.04/sunset_by_Someone.jpg
       nature/Other.jpg
Copyright: Someone, 2018
License: CC-BY-4.0

Files: debian/*
Copyright: 2020 Packager
License: GPL-2+
 Full text here.
"""
    stanzas = script.copyright_stanzas(text)
    assert script.licence_of(stanzas, "usr/share/backgrounds/sunset_by_Someone.jpg") == ("CC-BY-4.0", "Someone, 2018")
    assert script.licence_of(stanzas, "usr/share/backgrounds/mate/nature/Other.jpg")[0] == "CC-BY-4.0"
    assert script.licence_of(stanzas, "usr/share/wallpapers/X/contents/images/1.jpg") == ("GPL-2+", "2014 Some Team")


def test_centre_crop_gives_kodak_size() -> None:
    rng = np.random.default_rng(0)
    for h, w in ((1600, 2560), (2160, 2880), (512, 768), (600, 1600), (1000, 800)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out = centre_crop(image)
        assert out.shape == (512, 768, 3) and out.dtype == np.uint8
    image = rng.integers(0, 256, (512, 768, 3), dtype=np.uint8)
    assert np.array_equal(centre_crop(image), image)  # already Kodak's size: untouched
    wide = rng.integers(0, 256, (512, 1000, 3), dtype=np.uint8)
    assert np.array_equal(centre_crop(wide), wide[:, 116:884])  # no downscale needed: just the centre
    with pytest.raises(ValueError, match="cannot be centre-cropped"):
        centre_crop(rng.integers(0, 256, (768, 512, 3), dtype=np.uint8))  # portrait


def _tiny_corpus(folder: Path) -> list[dict]:
    rng = np.random.default_rng(1)
    entries = []
    for name, split, (w, h) in (("a.jpg", "train", (200, 160)), ("b.jpg", "train", (180, 140)),
                                ("c.jpg", "heldout", (800, 600))):
        (folder / split).mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        image.save(folder / split / name, quality=90)
        digest = hashlib.sha256((folder / split / name).read_bytes()).hexdigest()
        entries.append({"package": "pkg", "package_version": "1", "file": f"usr/share/backgrounds/{name}",
                        "name": name, "sha256": digest, "licence": "CC0-1.0", "author": "me", "width": w,
                        "height": h, "split": split, "reason": "photograph (test)"})
    (folder / "corpus.json").write_text(json.dumps({"packages": {"pkg": "1"}, "images": entries}))
    return entries


def test_corpus_loader_reads_a_tiny_folder(tmp_path: Path) -> None:
    _tiny_corpus(tmp_path)
    train = corpus_images(tmp_path, "train")
    assert sorted(train) == ["a", "b"] and train["a"].shape == (160, 200, 3)
    heldout = corpus_heldout(tmp_path)
    assert list(heldout) == ["c"] and heldout["c"].shape == (512, 768, 3)
    (tmp_path / "train" / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 2 corpus images missing"):
        corpus_images(tmp_path, "train")


def test_random_crops_at_several_scales_and_the_flag() -> None:
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), rng.integers(0, 256, (140, 140, 3), np.uint8)]
    crops = RandomCrops(images, 128, seed=0, scales=(1.0, 0.5, 0.25))
    assert [len(v) for v in crops.pyramids] == [2, 1]  # 0.25 of 300 and 0.5 of 140 are below the crop
    assert crops.pyramids[0][1].shape == (150, 200, 3)
    batch = crops.batch(6)
    assert batch.shape == (6, 3, 128, 128) and float(batch.min()) >= 0 and float(batch.max()) <= 1
    plain = RandomCrops(images, 128, seed=0)  # the default: the images as they are, as before
    assert [len(v) for v in plain.pyramids] == [1, 1]
    with pytest.raises(ValueError, match="scales"):
        RandomCrops(images, 128, scales=(1.5,))
    config = config_from_args(parse_args(["--out", "x", "--scales", "1", "0.5"]))
    assert config.scales == (1.0, 0.5)
    assert config_from_args(parse_args(["--out", "x"])).scales == (1.0,)
    with pytest.raises(ValueError, match="scales"):
        ImageCodecConfig(scales=(0.0,))


@pytest.mark.skipif(not os.environ.get("CODEC_CORPUS_DIR"), reason="CODEC_CORPUS_DIR (a built corpus) not set")
def test_built_corpus_matches_the_manifest() -> None:
    folder = Path(os.environ["CODEC_CORPUS_DIR"])
    manifest = read_corpus_manifest(CORPUS_MANIFEST)
    for entry in manifest["images"]:
        path = folder / entry["split"] / entry["name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], path
    heldout = corpus_heldout(folder, CORPUS_MANIFEST)
    assert len(heldout) == len(corpus_entries("heldout", manifest))
    assert all(img.shape == (512, 768, 3) for img in heldout.values())
