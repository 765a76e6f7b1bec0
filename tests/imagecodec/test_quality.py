"""Codec quality (issue 16 item 4): bpp per level on every compression, and on a sampled fraction the PSNR of
the reconstruction the encoder decodes from its own stream, in the same job on the version's worker."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from benchmarks.harness import LiveServer, metric_value, running_server
from families.imagecodec.codec import decode, encode
from service.families.imagecodec.metrics import ImagecodecMetrics
from service.families.imagecodec.quality import PSNR_CAP_DB, CodecQuality, level_of, psnr_db
from tests.fixtures.hostile import hostile_request
from tests.fixtures.imagecodec import local_codec

REPORT: list[tuple[str, int, float, float, float]] = []


def _image(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([np.sin(xx / 7 + c) * np.cos(yy / 5 - c) for c in range(3)], axis=-1) * 90 + 128
    noise = np.random.default_rng(seed).normal(0, 6, smooth.shape)
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def test_level_from_name_then_manifest() -> None:
    assert level_of("imagecodec-q3", 5) == "q3"
    assert level_of("imagecodec", 2) == "q2"
    assert level_of("imagecodec", None) == "unknown"


def test_psnr() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    assert psnr_db(a, a) == PSNR_CAP_DB
    b = a.copy()
    b[...] = 255
    assert psnr_db(a, b) == pytest.approx(0.0)


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_record_bpp_always_psnr_on_sampled(imagecodec_repository: Path, fraction: float) -> None:
    nets, model = local_codec(imagecodec_repository / "imagecodec" / "1", cpu_threads=1)
    registry = CollectorRegistry()
    quality = CodecQuality.create(ImagecodecMetrics(registry), "imagecodec", "1", 2, fraction, seed=0)
    image = _image()
    start = time.perf_counter()
    stream, info = encode(image, nets, model)
    encoded = time.perf_counter()
    quality.record(image, stream, info, nets, model)
    print(f"codec quality cost (64x64, fraction {fraction}): encode {(encoded - start) * 1000:.1f} ms, "
          f"record {(time.perf_counter() - encoded) * 1000:.1f} ms")
    labels = {"model": "imagecodec", "version": "1", "level": "q2"}
    assert registry.get_sample_value("quality_codec_bits_per_pixel_sum", labels) == pytest.approx(info.bpp)
    psnr_count = registry.get_sample_value("quality_codec_psnr_db_count", labels)
    assert psnr_count == (1 if fraction else None)  # no series at all for a version never sampled
    if fraction:
        expected = psnr_db(image, decode(stream, nets, model)[0])
        assert registry.get_sample_value("quality_codec_psnr_db_sum", labels) == pytest.approx(expected)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, imagecodec_repository: Path) -> Iterator[LiveServer]:
    with running_server(imagecodec_repository, tmp_path_factory.mktemp("codec-quality") / "server.log",
                      env={"SERVICE_IMAGECODEC_QUALITY_PSNR_FRACTION": "1.0"}) as live:
        yield live


def test_live_compression_exports_bpp_and_psnr(server: LiveServer) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_image(48, 80, seed=1)).save(buffer, format="PNG")
    files = {"image": ("x.png", buffer.getvalue(), "image/png")}
    response = hostile_request(server, lambda c: c.post("/image/compress", files=files), max_seconds=30,
                               report=REPORT, name="compress, PSNR self-checked")
    assert response.status_code == 200, response.text
    text = httpx.get(f"{server.url}/metrics").text
    labels = {"model": "imagecodec", "version": "1", "level": "q2"}
    assert metric_value(text, "quality_codec_bits_per_pixel_count", labels) == 1
    assert metric_value(text, "quality_codec_bits_per_pixel_sum", labels) == pytest.approx(
        float(response.headers["X-Bpp"]), rel=1e-4)
    assert metric_value(text, "quality_codec_psnr_db_count", labels) == 1
    psnr = metric_value(text, "quality_codec_psnr_db_sum", labels)
    decoded = httpx.post(f"{server.url}/image/decompress", content=response.content,
                         headers={"content-type": "application/octet-stream"}, timeout=60)
    assert decoded.status_code == 200
    reconstruction = np.asarray(Image.open(io.BytesIO(decoded.content)).convert("RGB"))
    assert psnr == pytest.approx(psnr_db(_image(48, 80, seed=1), reconstruction), rel=1e-6)
