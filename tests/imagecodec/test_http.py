"""End to end through the real service: bit-exact round trips, cross-runtime decoding, bad streams."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from export.core import publish
from export.families.imagecodec import plan_from_checkpoint
from families.imagecodec.bitstream import Bitstream
from families.imagecodec.codec import decode, encode
from tests.fixtures.imagecodec import local_codec, png_bytes, smooth_image, untrained_codec_checkpoint

SIZES = [(64, 64), (37, 101), (130, 67)]
MAX_PIXELS = 200 * 200


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imagecodec")
    ckpt = untrained_codec_checkpoint(root)
    repo = root / "repo"
    publish(plan_from_checkpoint(ckpt, {"max_pixels": str(MAX_PIXELS)}), repo, "imagecodec", version=1)
    publish(plan_from_checkpoint(ckpt, {"max_pixels": str(MAX_PIXELS), "format": "torchscript"}), repo,
            "imagecodec-ts", version=1)
    return repo


@pytest.fixture(scope="module")
def server(repository: Path, module_server):
    return module_server(repository)


@pytest.fixture(scope="module")
def module_server():  # module-scoped variant of conftest's live_server: one process for this module
    from benchmarks.harness import LiveServer

    servers = []

    def start(repository: Path):
        srv = LiveServer(repository, repository.parent / "server.log", None)
        servers.append(srv)
        srv.wait_ready()
        return srv

    yield start
    for srv in servers:
        srv.terminate()


def test_round_trip_bit_exact_and_cross_runtime(server, repository: Path) -> None:
    nets_onnx, model = local_codec(repository / "imagecodec" / "1")
    nets_ts, model_ts = local_codec(repository / "imagecodec-ts" / "1")
    assert model_ts.model_hash == model.model_hash  # same weights -> same identity in the stream
    for i, (h, w) in enumerate(SIZES):
        image = smooth_image(h, w, i)
        r = httpx.post(f"{server.url}/image/compress", files={"image": ("a.png", png_bytes(image), "image/png")},
                       timeout=60)
        assert r.status_code == 200, r.text
        stream = r.content
        local_stream, enc_info = encode(image, nets_onnx, model)
        assert stream == local_stream  # the service and the CLI write the same bytes
        d = httpx.post(f"{server.url}/image/decompress", content=stream, timeout=60)
        assert d.status_code == 200, d.text
        served = np.asarray(Image.open(io.BytesIO(d.content)).convert("RGB"))
        local_image, dec_info = decode(stream, nets_onnx, model)
        assert served.shape == (h, w, 3)
        np.testing.assert_array_equal(served, local_image)
        np.testing.assert_array_equal(dec_info.symbols, enc_info.symbols)
        # ONNX Runtime stream -> TorchScript decoder (HTTP, model imagecodec-ts) and locally: same symbols.
        d_ts = httpx.post(f"{server.url}/image/decompress", content=stream, params={"model": "imagecodec-ts"},
                          timeout=60)
        assert d_ts.status_code == 200, d_ts.text
        served_ts = np.asarray(Image.open(io.BytesIO(d_ts.content)).convert("RGB"))
        _, ts_info = decode(stream, nets_ts, model_ts)
        np.testing.assert_array_equal(ts_info.symbols, enc_info.symbols)
        assert np.abs(served_ts.astype(int) - served.astype(int)).max() <= 1


def _error(server, body: bytes) -> httpx.Response:
    start = time.perf_counter()
    r = httpx.post(f"{server.url}/image/decompress", content=body, timeout=30)
    assert time.perf_counter() - start < 5.0
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.json()["error"]["message"]
    return r


def _reseal(stream: Bitstream) -> bytes:
    return stream.to_bytes()


def test_bad_streams_are_refused_quickly(server) -> None:
    image = smooth_image(64, 96, 7)
    good = httpx.post(f"{server.url}/image/compress", files={"image": ("a.png", png_bytes(image), "image/png")},
                      timeout=60).content
    for cut in (3, 10, len(good) // 2, len(good) - 1):
        assert _error(server, good[:cut]).status_code == 400
    rng = np.random.default_rng(0)
    for _ in range(20):
        fuzzed = bytearray(good)
        for pos in rng.integers(0, len(good), size=3):
            fuzzed[pos] ^= int(rng.integers(1, 256))
        _error(server, bytes(fuzzed))
    _error(server, rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    wrong_version = bytearray(good)
    wrong_version[4] = 99
    r = _error(server, bytes(wrong_version))
    assert r.status_code == 422 and "version" in r.json()["error"]["message"]
    parsed = Bitstream.parse(good)
    parsed.model_name = "someone-else"
    r = _error(server, _reseal(parsed))
    assert r.status_code == 422 and "someone-else" in r.json()["error"]["message"]
    parsed = Bitstream.parse(good)
    parsed.model_hash = b"\0" * 8
    r = _error(server, _reseal(parsed))
    assert r.status_code == 422 and "hash" in r.json()["error"]["message"]
    # A stream with a valid checksum but scrambled payload decodes to *something* or fails cleanly.
    parsed = Bitstream.parse(good)
    parsed.escapes = b"\1\2\3"
    body = parsed.to_bytes()
    assert struct.unpack("<I", body[-4:])[0] == zlib.crc32(body[:-4])
    _error(server, body)
    for seed in range(3):  # valid checksum, random entropy-coded payload: an image or a 4xx, never a 500
        parsed = Bitstream.parse(good)
        parsed.y = np.random.default_rng(seed).integers(0, 2**32, len(parsed.y) // 4, dtype=np.uint32).tobytes()
        start = time.perf_counter()
        r = httpx.post(f"{server.url}/image/decompress", content=parsed.to_bytes(), timeout=30)
        assert r.status_code in (200, 400, 422) and time.perf_counter() - start < 10.0, r.text


def test_oversized_and_wrong_media(server) -> None:
    big = png_bytes(np.zeros((250, 250, 3), dtype=np.uint8))
    r = httpx.post(f"{server.url}/image/compress", files={"image": ("a.png", big, "image/png")}, timeout=30)
    assert r.status_code == 413, r.text
    r = httpx.post(f"{server.url}/image/compress", files={"image": ("a.txt", b"hello", "text/plain")}, timeout=30)
    assert r.status_code == 415, r.text
