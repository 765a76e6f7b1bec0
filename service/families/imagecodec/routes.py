"""POST /image/compress (PNG/JPEG upload) -> bitstream, POST /image/decompress (bitstream) -> PNG.

The progressive coding loop runs in the version's procedure queues ("compress", "decompress") on its
worker thread, never on the event loop. Streams are parsed and checked (magic, version, lengths,
checksum, model identity) on the event loop before anything is queued: that costs microseconds, so
bad streams are refused at once with a clear 4xx.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile

from service.errors import BadRequest, InvalidInput, NotFound, PayloadTooLarge, UnsupportedMediaType
from service.families.base import request_context, resolve_version
from service.families.imagecodec.bitstream import Bitstream, BitstreamError
from service.families.imagecodec.codec import CodecModel, check_stream, decode, encode
from service.families.imagecodec.tables import PmfTables

FAMILY_NAME = "imagecodec"
TABLES_ASSET = "pmf_tables.npz"
ACCEPTED_IMAGE_TYPES = {"PNG", "JPEG"}


def prepare_version(version) -> None:
    """Load the shipped pmf tables and register the two codec procedures."""
    pre = version.manifest.preprocessing
    tables = PmfTables.from_bytes(version.asset_path(TABLES_ASSET).read_bytes())
    model = CodecModel(name=version.name, model_hash=bytes.fromhex(pre["model_hash"]), M=int(pre["M"]),
                       N=int(pre["N"]), tables=tables, max_pixels=int(pre.get("max_pixels", 4096 * 4096)))
    version.state["codec"] = model

    def nets(graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return version.runtimes[graph].run(inputs)

    def compress(payloads: list[np.ndarray]) -> list[Any]:
        return [encode(image, nets, model) for image in payloads]

    def decompress(payloads: list[bytes]) -> list[Any]:
        results: list[Any] = []
        for data in payloads:
            try:
                results.append(decode(data, nets, model))
            except BitstreamError as exc:  # a stream that passed the header checks but is still bad
                results.append(_stream_error(exc))
            except (ValueError, IndexError, OverflowError) as exc:  # crafted payload with a valid checksum
                results.append(BadRequest(f"bitstream could not be decoded: {exc}", details={"reason": "corrupted"}))
        return results

    version.add_procedure("compress", compress)
    version.add_procedure("decompress", decompress)


def _stream_error(exc: BitstreamError) -> Exception:
    if exc.kind in ("truncated", "corrupted"):
        return BadRequest(str(exc), details={"reason": exc.kind})
    return InvalidInput(str(exc), details={"reason": exc.kind})


def _read_image(data: bytes, max_pixels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError) as exc:
        raise UnsupportedMediaType("field 'image' is not a readable PNG or JPEG image") from exc
    if img.format not in ACCEPTED_IMAGE_TYPES:
        raise UnsupportedMediaType(f"field 'image' is {img.format}; send PNG or JPEG")
    width, height = img.size
    if width * height > max_pixels:  # checked on the header, before decoding any pixel
        raise PayloadTooLarge(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels",
                              details={"width": width, "height": height, "max_pixels": max_pixels})
    try:
        rgb = np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"field 'image' could not be decoded: {exc}") from exc
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise InvalidInput("field 'image' has no pixels")
    return np.ascontiguousarray(rgb)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def build_router() -> APIRouter:
    router = APIRouter(prefix="/image", tags=["image"])

    @router.post(
        "/compress",
        response_class=Response,
        responses={200: {"content": {"application/octet-stream": {}},
                         "description": "the self-describing HPCM bitstream (headers carry bpp and model)"}},
    )
    async def compress(request: Request, image: UploadFile = File(..., description="PNG or JPEG photo"),
                       quality: int | None = Form(None, ge=1, le=6, description="quality level -> imagecodec-qN"),
                       model: str | None = Query(None, description="model name (overrides quality)"),
                       version: int | None = Query(None)) -> Response:
        """Compress an image of any size (padded to a multiple of 64 internally, cropped on decode)."""
        name = model or (f"{FAMILY_NAME}-q{quality}" if quality is not None else None)
        loaded = resolve_version(request, family=FAMILY_NAME, model=name, version=version)
        codec: CodecModel = loaded.state["codec"]
        pixels = _read_image(await image.read(), codec.max_pixels)
        data, info = await loaded.submit("compress", pixels, ctx=request_context(request))
        return Response(content=data, media_type="application/octet-stream", headers={
            "X-Model": loaded.name, "X-Model-Version": str(loaded.version), "X-Bpp": f"{info.bpp:.5f}",
            "X-Image-Size": f"{pixels.shape[1]}x{pixels.shape[0]}", "X-Scale-Hints": str(info.hints),
        })

    @router.post(
        "/decompress",
        response_class=Response,
        openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {}}}},
        responses={200: {"content": {"image/png": {}}, "description": "the decoded image"}},
    )
    async def decompress(request: Request, model: str | None = Query(None), version: int | None = Query(None)):
        """Decode a bitstream (raw request body). The model defaults to the one named in the stream."""
        data = await request.body()
        if not data:
            raise BadRequest("empty body: send the bitstream bytes as application/octet-stream")
        try:
            stream = Bitstream.parse(data)
        except BitstreamError as exc:
            raise _stream_error(exc) from None
        name = model or stream.model_name
        try:
            loaded = resolve_version(request, family=FAMILY_NAME, model=name, version=version)
        except NotFound as exc:
            raise InvalidInput(f"bitstream was made by model {stream.model_name!r}: {exc.message}",
                               details={"reason": "model"}) from None
        try:
            check_stream(stream, loaded.state["codec"])
        except BitstreamError as exc:
            raise _stream_error(exc) from None
        image, _ = await loaded.submit("decompress", data, ctx=request_context(request))
        return Response(content=_png(image), media_type="image/png",
                        headers={"X-Model": loaded.name, "X-Model-Version": str(loaded.version)})

    return router
