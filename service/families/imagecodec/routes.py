"""POST /image/compress (PNG/JPEG upload) -> bitstream, POST /image/decompress (bitstream) -> PNG.

Cheap checks come first and cost no work: content type, admission (the work pool and, where the model is
known, the version's codec queue: 429 before the body is read), then sizes from headers (the image
header, the stream header: padded pixel area, aspect ratio, substream lengths). Decoding the upload and
checking a stream (checksum, bounded inflate of the hints) run on the work pool; the progressive coding
loop runs in the version's procedure queues ("compress", "decompress") on its worker thread. Nothing
request-sized runs on the event loop.

Streams outlive model updates: /image/decompress picks the version whose weight hash is the stream's (the
served one when it matches, else an older version the model's version policy keeps loadable).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from starlette.datastructures import UploadFile

from families.imagecodec.bitstream import BitstreamError, StreamHeader
from families.imagecodec.codec import (
    MAX_ASPECT,
    CodecModel,
    PreparedStream,
    SizeError,
    check_size,
    check_stream,
    decode,
    encode,
    prepare_stream,
)
from families.imagecodec.tables import PmfTables
from service.dataplane import hub_of, request_context, resolve_version, workpool_of
from service.errors import BadRequest, InvalidInput, NotFound, PayloadTooLarge, UnsupportedMediaType
from service.families.imagecodec.quality import STATE_KEY as QUALITY_KEY
from service.families.imagecodec.quality import CodecQuality

FAMILY_NAME = "imagecodec"
TABLES_ASSET = "pmf_tables.npz"
ACCEPTED_IMAGE_TYPES = ("JPEG", "PNG")
STREAM_MEDIA_TYPE = "application/octet-stream"
QUALITIES = range(1, 7)


def prepare_version(version) -> None:
    """Load the shipped pmf tables and register the two codec procedures."""
    pre = version.manifest.preprocessing
    tables = PmfTables.from_bytes(version.asset_path(TABLES_ASSET).read_bytes())
    model = CodecModel(name=version.name, model_hash=bytes.fromhex(pre["model_hash"]), M=int(pre["M"]),
                       N=int(pre["N"]), tables=tables, max_pixels=int(pre.get("max_pixels", 4096 * 4096)),
                       max_aspect=int(pre.get("max_aspect", MAX_ASPECT)))
    version.state["codec"] = model

    def nets(graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return version.runtimes[graph].run(inputs)

    def compress(payloads: list[np.ndarray]) -> list[Any]:
        quality: CodecQuality | None = version.state.get(QUALITY_KEY)  # set by the first request
        results = []
        for image in payloads:
            stream, info = encode(image, nets, model)
            if quality is not None:  # bpp; on a sampled share, decode what was written for PSNR
                quality.record(image, stream, info, nets, model)
            results.append((stream, info))
        return results

    def decompress(payloads: list[PreparedStream]) -> list[Any]:
        results: list[Any] = []
        for prepared in payloads:
            try:
                image, _ = decode(prepared, nets, model)
                results.append(_png(image))  # here, not on the loop: a large PNG takes a while to write
            except BitstreamError as exc:  # a stream that passed the checks but is still bad
                results.append(_stream_error(exc))
            except (ValueError, IndexError, OverflowError) as exc:  # crafted payload with a valid checksum
                results.append(BadRequest(f"bitstream could not be decoded: {exc}", details={"reason": "corrupted"}))
        return results

    version.add_procedure("compress", compress)
    version.add_procedure("decompress", decompress)


def _stream_error(exc: BitstreamError) -> Exception:
    if exc.kind in ("truncated", "corrupted", "size"):
        return BadRequest(str(exc), details={"reason": exc.kind})
    return InvalidInput(str(exc), details={"reason": exc.kind})


def _size_error(exc: SizeError) -> Exception:
    details = {"field": "image", "reason": exc.kind, **exc.details}
    if exc.kind == "pixels":
        return PayloadTooLarge(f"field 'image': {exc}", details=details)
    if exc.kind == "aspect":
        return BadRequest(f"field 'image': {exc}", details=details)
    return InvalidInput(f"field 'image': {exc}", details=details)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


# ---- /image/compress ---------------------------------------------------------------------------------

def _read_image(data: bytes, model: CodecModel) -> np.ndarray:
    """Upload -> uint8 RGB, on the work pool; the size is checked on the header, before any pixel."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data), formats=ACCEPTED_IMAGE_TYPES)
    except Image.DecompressionBombError as exc:  # Pillow's own header check, far above ours
        raise PayloadTooLarge(f"field 'image' is too large: {exc}; this model codes at most {model.max_pixels} "
                              "pixels (padded to multiples of 64)",
                              details={"field": "image", "reason": "pixels", "max_pixels": model.max_pixels}) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UnsupportedMediaType("field 'image' is not a readable PNG or JPEG image") from exc
    width, height = img.size
    try:
        check_size(height, width, model)
    except SizeError as exc:
        raise _size_error(exc) from None
    try:
        rgb = np.asarray(img.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or damaged pixel data
        raise InvalidInput(f"field 'image' could not be decoded: {exc}", details={"field": "image"}) from exc
    return np.ascontiguousarray(rgb)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _parse_quality(raw: Any) -> int:
    try:
        quality = int(str(raw))
    except ValueError:
        quality = 0
    if quality not in QUALITIES:
        raise InvalidInput(f"field 'quality' must be an integer from 1 to 6, got {str(raw)[:20]!r}",
                           details={"field": "quality"})
    return quality


async def _read_upload(request: Request) -> tuple[bytes, int | None]:
    """(image bytes, form quality) from the multipart body."""
    try:
        form = await request.form(max_files=1, max_fields=2)
    except Exception as exc:  # noqa: BLE001 - malformed multipart bodies raise several types
        raise BadRequest(f"malformed multipart body ({exc})") from None
    try:
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise InvalidInput("form field 'image' (a PNG or JPEG file upload) is required", details={"field": "image"})
        raw_quality = form.get("quality")
        quality = None if raw_quality in (None, "") else _parse_quality(raw_quality)
        return await image.read(), quality
    finally:
        await form.close()


def _compress_version(request: Request, model: str | None, quality: int | None, version: int | None):
    name = model or (f"{FAMILY_NAME}-q{quality}" if quality is not None else None)
    loaded = resolve_version(request, family=FAMILY_NAME, model=name, version=version)
    loaded.batchers["compress"].check_admission()  # 429 before any decoding
    return loaded


def _quality(request: Request, loaded) -> CodecQuality:
    """The version's quality recorder, made on first use (event loop: no await between check and set)."""
    quality = loaded.state.get(QUALITY_KEY)
    if quality is None:
        app = request.app.state
        quality = CodecQuality.create(app.metrics.quality, loaded, app.settings.quality_codec_psnr_fraction)
        loaded.state[QUALITY_KEY] = quality
    return quality


async def _compress(request: Request, model: str | None, quality: int | None, version: int | None) -> Response:
    if _media_type(request) != "multipart/form-data":
        raise UnsupportedMediaType(f"content type {_media_type(request) or '(none)'!r}: send multipart/form-data "
                                   "with the image in field 'image'")
    pool = workpool_of(request)
    pool.admit("image upload")
    # The model (hence its queue) is known from the query: refuse before reading the body.
    loaded = _compress_version(request, model, quality, version) if model or quality is not None else None
    data, form_quality = await _read_upload(request)
    if quality is not None and form_quality is not None and form_quality != quality:
        raise InvalidInput(f"quality {quality} in the query and {form_quality} in the form disagree",
                           details={"field": "quality"})
    if loaded is None:
        loaded = _compress_version(request, model, form_quality, version)
    else:
        loaded.batchers["compress"].check_admission()  # it may have filled while the body arrived
    codec: CodecModel = loaded.state["codec"]
    _quality(request, loaded)
    ctx = request_context(request)
    pixels = await pool.run(_read_image, data, codec, ctx=ctx, what="image decode")
    stream, info = await loaded.submit("compress", pixels, ctx=ctx)
    return Response(content=stream, media_type=STREAM_MEDIA_TYPE, headers={
        "X-Model": loaded.name, "X-Model-Version": str(loaded.version), "X-Bpp": f"{info.bpp:.5f}",
        "X-Image-Size": f"{pixels.shape[1]}x{pixels.shape[0]}", "X-Scale-Hints": str(info.hints),
    })


# ---- /image/decompress -------------------------------------------------------------------------------

def _prepare(data: bytes, model: CodecModel) -> PreparedStream:
    """Checksum, bounded hints inflate and escape checks, on the work pool."""
    try:
        return prepare_stream(data, model)
    except BitstreamError as exc:
        raise _stream_error(exc) from None


def _record(request: Request, loaded) -> None:
    request.state.model_name = loaded.name
    request.state.model_version = str(loaded.version)


async def _decoder_for(request: Request, header: StreamHeader, model: str | None, version: int | None):
    """The loaded version that decodes this stream: the one asked for, else the one with the stream's
    weight hash (the served version when it matches, else an older one, loaded if the policy allows)."""
    name = model or header.model_name
    try:
        served = resolve_version(request, family=FAMILY_NAME, model=name, version=version)
    except NotFound as exc:
        raise InvalidInput(f"bitstream was made by model {header.model_name!r}: {exc.message}",
                           details={"reason": "model"}) from None
    if version is not None or served.state["codec"].model_hash == header.model_hash:
        return served
    hub = hub_of(request)
    wanted = header.model_hash.hex()
    matches = [v for v, m in hub.manifests(name).items()
               if m.family == FAMILY_NAME and str(m.preprocessing.get("model_hash", "")).lower() == wanted]
    if not matches:
        return served  # check_stream names the mismatch (422)
    try:
        loaded = await hub.acquire(name, max(matches))
    except NotFound as exc:
        raise InvalidInput(f"bitstream was made by {name!r} version {max(matches)} (hash {wanted}), which this "
                           f"server does not keep loadable: {exc.message}",
                           details={"reason": "model", "version": max(matches)}) from None
    _record(request, loaded)
    return loaded


async def _decompress(request: Request, model: str | None, version: int | None) -> Response:
    media_type = _media_type(request)
    if media_type not in ("", STREAM_MEDIA_TYPE):  # absent: RFC 9110 lets us assume octet-stream
        raise UnsupportedMediaType(f"content type {media_type!r}: send the bitstream as {STREAM_MEDIA_TYPE}")
    pool = workpool_of(request)
    pool.admit("bitstream")
    data = await request.body()
    if not data:
        raise BadRequest(f"empty body: send the bitstream bytes as {STREAM_MEDIA_TYPE}")
    try:
        header = StreamHeader.peek(data)
        loaded = await _decoder_for(request, header, model, version)
        codec: CodecModel = loaded.state["codec"]
        check_stream(header, codec)  # size, aspect and substream lengths: refused before any work
    except BitstreamError as exc:
        raise _stream_error(exc) from None
    loaded.batchers["decompress"].check_admission()
    ctx = request_context(request)
    prepared = await pool.run(_prepare, data, codec, ctx=ctx, what="bitstream check")
    png = await loaded.submit("decompress", prepared, ctx=ctx)
    return Response(content=png, media_type="image/png",
                    headers={"X-Model": loaded.name, "X-Model-Version": str(loaded.version)})


_UPLOAD_SCHEMA = {"type": "object", "required": ["image"], "properties": {
    "image": {"type": "string", "format": "binary", "description": "PNG or JPEG photo"},
    "quality": {"type": "integer", "minimum": 1, "maximum": 6, "description": "quality level -> imagecodec-qN"},
}}


def build_router() -> APIRouter:
    router = APIRouter(prefix="/image", tags=["image"])

    @router.post(
        "/compress",
        response_class=Response,
        openapi_extra={"requestBody": {"required": True,
                                       "content": {"multipart/form-data": {"schema": _UPLOAD_SCHEMA}}}},
        responses={200: {"content": {"application/octet-stream": {}},
                         "description": "the self-describing HPCM bitstream (headers carry bpp and model)"}},
    )
    async def compress(request: Request,
                       quality: int | None = Query(None, ge=1, le=6,
                                                   description="quality level -> imagecodec-qN (or a form field)"),
                       model: str | None = Query(None, description="model name (overrides quality)"),
                       version: int | None = Query(None)) -> Response:
        """Compress an image (padded to a multiple of 64 internally, cropped on decode). The padded area is
        capped by the model's `max_pixels` (413) and its aspect ratio by `max_aspect` (400)."""
        return await _compress(request, model, quality, version)

    @router.post(
        "/decompress",
        response_class=Response,
        openapi_extra={"requestBody": {"required": True, "content": {STREAM_MEDIA_TYPE: {}}}},
        responses={200: {"content": {"image/png": {}}, "description": "the decoded image"}},
    )
    async def decompress(request: Request, model: str | None = Query(None), version: int | None = Query(None)):
        """Decode a bitstream (raw request body, application/octet-stream). The model defaults to the one
        named in the stream, and the version to the one whose weights made it."""
        return await _decompress(request, model, version)

    return router
