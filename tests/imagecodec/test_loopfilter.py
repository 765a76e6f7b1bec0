"""The adaptive loop filter: fitted by the encoder, carried in the stream (format 2), applied by the decoder;
format-1 streams (no filter) still decode; a crafted filter substream is refused before any network."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from families.imagecodec import codec, loopfilter
from families.imagecodec.bitstream import Bitstream, BitstreamError
from training.imagecodec.config import tiny_config
from training.imagecodec.model import ImageCodec
from training.imagecodec.networks import TorchNetworks, codec_model


def _photo_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, saturated colour image in [0, 1], (3, H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [0.5 + 0.4 * np.sin(6 * xx * rng.uniform(0.5, 2) + 4 * yy * rng.uniform(0.5, 2) + c) for c in range(3)]
    return np.stack(channels).astype(np.float32)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def test_fit_undoes_a_colour_cast_and_blur() -> None:
    original = _photo_like(96, 128)
    grey = original.mean(axis=0, keepdims=True)
    cast = 0.5 * original + 0.5 * grey + np.array([0.05, -0.08, 0.03], np.float32).reshape(3, 1, 1)
    blurred = (cast + np.roll(cast, 1, axis=2) + np.roll(cast, -1, axis=2)) / 3
    coefficients = loopfilter.fit(blurred, original)
    assert coefficients.shape == (3, loopfilter.FEATURES) and coefficients.dtype == np.float16
    filtered = loopfilter.apply(blurred, coefficients)
    before = np.mean((blurred - original) ** 2)
    after = np.mean((filtered - original) ** 2)
    assert after < 0.05 * before, (before, after)
    plain_error, filtered_error = loopfilter.squared_errors(original, blurred, coefficients)
    assert filtered_error < 0.05 * plain_error
    assert loopfilter.worth_sending(plain_error, filtered_error, 96 * 128)
    np.testing.assert_array_equal(loopfilter.choose(blurred, original), coefficients)
    np.testing.assert_array_equal(loopfilter.from_bytes(loopfilter.to_bytes(coefficients)), coefficients)


def test_a_filter_that_gains_nothing_is_not_sent() -> None:
    original = _photo_like(64, 64, seed=1)
    coefficients = loopfilter.fit(original, original)  # the identity, up to float16 rounding
    assert not loopfilter.worth_sending(*loopfilter.squared_errors(original, original, coefficients), 64 * 64)
    assert loopfilter.choose(original, original) is None


def test_strips_give_the_whole_image_answer(monkeypatch) -> None:
    """Fitting and filtering strip by strip (bounded memory) equals doing it on the whole image at once."""
    original = _photo_like(37, 23, seed=3)
    cast = 0.8 * original[[1, 2, 0]] + 0.1
    whole_fit, whole_out = loopfilter.fit(cast, original), loopfilter.apply(cast, loopfilter.fit(cast, original))
    monkeypatch.setattr(loopfilter, "STRIP_PIXELS", 2 * 23)  # strips of 2 rows, the last one shorter
    # float16 coefficients: sums in another order may round the last bit the other way
    np.testing.assert_allclose(loopfilter.fit(cast, original).astype(np.float32), whole_fit, rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(loopfilter.apply(cast, whole_fit), whole_out, atol=1e-6)
    # the 3x3 neighbourhood of a pixel at a strip's edge reaches into the next strip: a direct reference
    padded = np.pad(cast, ((0, 0), (1, 1), (1, 1)), mode="edge")
    weights = whole_fit.astype(np.float64)
    r, c = 2, 5  # the first row of the second strip
    patch = padded[:, r: r + 3, c: c + 3].transpose(1, 2, 0).reshape(-1)  # (dy, dx, channel) order
    expected = weights[:, :-1] @ patch + weights[:, -1]
    np.testing.assert_allclose(loopfilter.apply(cast, whole_fit)[:, r, c], expected, atol=1e-5)


@pytest.mark.parametrize(("data", "needle"), [
    (b"\0" * (loopfilter.FILTER_BYTES - 2), "bytes"),
    (np.full(3 * loopfilter.FEATURES, np.nan, "<f2").tobytes(), "non-finite"),
    (np.full(3 * loopfilter.FEATURES, 1000.0, "<f2").tobytes(), "out-of-range"),
])
def test_filter_substream_is_validated(data: bytes, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        loopfilter.from_bytes(data)
    assert loopfilter.from_bytes(b"") is None


@pytest.fixture(scope="module")
def tiny() -> tuple[TorchNetworks, codec.CodecModel]:
    torch.manual_seed(0)
    model = ImageCodec(tiny_config()).eval()
    return TorchNetworks(model), codec_model(model, "t")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.rint(_photo_like(128, 192, seed=2).transpose(1, 2, 0) * 255).astype(np.uint8)


def _rewrite(data: bytes, **changes) -> bytes:
    return dataclasses.replace(Bitstream.parse(data), **changes).to_bytes()


def test_encoder_sends_the_filter_and_it_improves_the_decoded_image(tiny, image) -> None:
    nets, cm = tiny
    data, enc = codec.encode(image, nets, cm)
    stream = Bitstream.parse(data)
    assert stream.format_version == 2 and len(stream.filter) == loopfilter.FILTER_BYTES  # untrained: a cast
    with_filter, dec = codec.decode(data, nets, cm)
    np.testing.assert_array_equal(dec.symbols, enc.symbols)
    without, _ = codec.decode(_rewrite(data, filter=b""), nets, cm)
    assert _psnr(image, with_filter) > _psnr(image, without) + 1.0


def test_format_1_streams_still_decode(tiny, image) -> None:
    nets, cm = tiny
    data, _ = codec.encode(image, nets, cm)
    old = _rewrite(data, filter=b"", format_version=1)
    assert len(old) == len(data) - loopfilter.FILTER_BYTES - 4  # no filter, one length field fewer
    decoded, _ = codec.decode(old, nets, cm)
    plain, _ = codec.decode(_rewrite(data, filter=b""), nets, cm)
    np.testing.assert_array_equal(decoded, plain)
    with pytest.raises(ValueError, match="format version 1"):
        dataclasses.replace(Bitstream.parse(data), format_version=1).to_bytes()  # format 1 has no filter


@pytest.mark.parametrize("filter_bytes", [b"\0" * 7, np.full(3 * loopfilter.FEATURES, np.inf, "<f2").tobytes()])
def test_crafted_filter_is_a_corrupted_stream(tiny, image, filter_bytes: bytes) -> None:
    nets, cm = tiny
    data, _ = codec.encode(image, nets, cm)
    with pytest.raises(BitstreamError) as caught:
        codec.prepare_stream(_rewrite(data, filter=filter_bytes), cm)
    assert caught.value.kind == "corrupted" and "filter" in str(caught.value)
