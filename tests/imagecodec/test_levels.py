"""Quality levels from one checkpoint by quantisation step: rates that increase with the level, exact round
trips per level through the service, streams that only their own level decodes, a clear 404 for levels
that are not installed."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from export.families.imagecodec import publish_levels
from families.imagecodec.bitstream import BitstreamError, StreamHeader
from families.imagecodec.codec import decode, encode
from families.imagecodec.contract import Preprocessing, level_hash, level_name
from families.manifest import Manifest, verify_files
from tests.fixtures.imagecodec import local_codec, png_bytes, smooth_image, untrained_codec_checkpoint
from training.imagecodec.default import SHIPPED_Q2, STEP_LEVELS
from training.imagecodec.evaluate import psnr
from training.imagecodec.networks import TorchNetworks, codec_model
from training.imagecodec.train import load_checkpoint

LEVELS = STEP_LEVELS  # {1: 2.0, 2: 1.0, 3: 0.7, 4: 0.5}: one checkpoint at quantisation steps


def _photo_crops() -> dict[str, np.ndarray]:
    from training.imagecodec.data import heldout_photos

    return {name: np.ascontiguousarray(img[64:256 + 64, 64:192 + 64]) for name, img in heldout_photos().items()}


def test_shipped_checkpoint_rate_and_psnr_increase_with_the_level() -> None:
    """The shipped checkpoint at the default levels' steps, on crops of real photographs it never saw: bpp
    (actual stream bytes) strictly increasing with the level on every image, mean PSNR increasing, and
    every stream decodes to the symbols that were coded."""
    torch.set_num_threads(2)
    model = load_checkpoint(SHIPPED_Q2).model
    nets = TorchNetworks(model)
    crops = _photo_crops()
    bpp: dict[int, list[float]] = {}
    quality: dict[int, list[float]] = {}
    for level, step in sorted(LEVELS.items()):
        cm = codec_model(model, level_name(level), step=step)
        for image in crops.values():
            data, enc = encode(image, nets, cm)
            rec, dec = decode(data, nets, cm)
            np.testing.assert_array_equal(dec.symbols, enc.symbols)
            bpp.setdefault(level, []).append(8 * len(data) / image[..., 0].size)
            quality.setdefault(level, []).append(psnr(image, rec))
    rates = np.array([bpp[q] for q in sorted(LEVELS)])  # (levels, images)
    assert (np.diff(rates, axis=0) > 0).all(), rates
    assert (np.diff(np.mean([quality[q] for q in sorted(LEVELS)], axis=1)) > 0).all(), quality


def test_step_one_is_the_trained_identity_and_other_steps_are_not() -> None:
    weights = bytes(range(8))
    assert level_hash(weights, 1.0) == weights  # streams of the trained point are those of before
    others = {level_hash(weights, s) for s in (2.0, 0.7, 0.5)}
    assert len(others) == 3 and weights not in others
    with pytest.raises(ValueError):
        level_hash(weights, 0.0)


@pytest.fixture(scope="module")
def levels_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("imagecodec-levels")
    ckpt = untrained_codec_checkpoint(root)
    repo = root / "repo"
    written = publish_levels(ckpt, repo, LEVELS)
    assert sorted(p.parent.name for p in written) == [level_name(q) for q in sorted(LEVELS)]
    assert publish_levels(ckpt, repo, LEVELS) == []  # installed levels are left as they are
    return repo, ckpt


def test_derived_levels_share_the_graphs_and_name_their_step(levels_repository: tuple[Path, Path]) -> None:
    repo, _ = levels_repository
    base = Manifest.read(repo / level_name(2) / "1")
    base_pre = base.preprocessing_as(Preprocessing)
    assert base_pre.step == 1.0 and base_pre.quality == 2
    for level, step in LEVELS.items():
        vdir = repo / level_name(level) / "1"
        manifest = Manifest.read(vdir)
        verify_files(vdir, manifest)  # every file there, with its checksum
        pre = manifest.preprocessing_as(Preprocessing)
        assert (manifest.name, pre.quality, pre.step) == (level_name(level), level, step)
        assert pre.hash_bytes == level_hash(base_pre.hash_bytes, step)
        assert {g.file for g in manifest.graphs.values()} == {g.file for g in base.graphs.values()}
        if step != 1.0:
            assert manifest.provenance["derived_from"]["model"] == level_name(2)
            assert "not trained" in manifest.provenance["level"]


@pytest.fixture(scope="module")
def server(levels_repository: tuple[Path, Path], serve):
    return serve(levels_repository[0])


def _compress(server, image: np.ndarray, **params) -> httpx.Response:
    return httpx.post(f"{server.url}/image/compress", files={"image": ("a.png", png_bytes(image), "image/png")},
                      params=params, timeout=60)


def test_each_level_round_trips_exactly_over_http(server, levels_repository: tuple[Path, Path]) -> None:
    repo, _ = levels_repository
    image = smooth_image(96, 130, 3)
    sizes = []
    for level in sorted(LEVELS):
        r = _compress(server, image, quality=level)
        assert r.status_code == 200, r.text
        stream = r.content
        assert StreamHeader.peek(stream).model_name == level_name(level)
        nets, model = local_codec(repo / level_name(level) / "1")
        local_stream, enc = encode(image, nets, model)
        assert stream == local_stream  # the service codes with the level's step, as the CLI does
        d = httpx.post(f"{server.url}/image/decompress", content=stream, timeout=60)
        assert d.status_code == 200, d.text
        served = np.asarray(Image.open(io.BytesIO(d.content)).convert("RGB"))
        local, dec = decode(stream, nets, model)
        np.testing.assert_array_equal(served, local)
        np.testing.assert_array_equal(dec.symbols, enc.symbols)
        sizes.append(len(stream))
    assert all(a < b for a, b in zip(sizes, sizes[1:], strict=False)), sizes


def test_a_stream_decodes_with_its_own_level_only(server, levels_repository: tuple[Path, Path]) -> None:
    repo, _ = levels_repository
    image = smooth_image(64, 64, 5)
    stream = _compress(server, image, quality=1).content
    wrong = httpx.post(f"{server.url}/image/decompress", content=stream, params={"model": level_name(3)}, timeout=30)
    assert wrong.status_code == 422, wrong.text
    assert wrong.json()["error"]["details"]["reason"] == "model"
    assert level_name(1) in wrong.json()["error"]["message"]
    nets, q3 = local_codec(repo / level_name(3) / "1")
    with pytest.raises(BitstreamError) as caught:
        decode(stream, nets, q3)
    assert caught.value.kind == "model"


def test_default_level_missing_levels_and_streams_of_the_unlevelled_name(
        server, levels_repository: tuple[Path, Path]) -> None:
    repo, ckpt = levels_repository
    image = smooth_image(64, 128, 6)
    r = _compress(server, image)  # no level: the default one (2, the trained point)
    assert r.status_code == 200, r.text
    assert StreamHeader.peek(r.content).model_name == level_name(2)
    missing = _compress(server, image, quality=5)
    assert missing.status_code == 404, missing.text
    message = missing.json()["error"]["message"]
    assert "quality level 5 is not installed" in message
    assert all(level_name(q) in message for q in LEVELS), message
    # A stream of the trained checkpoint written under the model name `imagecodec` (the single default of
    # earlier releases) carries the hash of step 1: the level-2 model decodes it.
    model = load_checkpoint(ckpt).model
    old, enc = encode(image, TorchNetworks(model), codec_model(model, "imagecodec"))
    d = httpx.post(f"{server.url}/image/decompress", content=old, timeout=60)
    assert d.status_code == 200, d.text
    assert d.headers["x-model"] == level_name(2)
    nets, q2 = local_codec(repo / level_name(2) / "1")
    _, dec = decode(old, nets, q2)
    np.testing.assert_array_equal(dec.symbols, enc.symbols)
