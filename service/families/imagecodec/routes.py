"""POST /image/compress (PNG/JPEG upload) -> bitstream, POST /image/decompress (bitstream) -> PNG.

Cheap checks come first and cost no work: content type, admission (the work pool and, where the model is
known, the version's codec queue: 429 before the body is read), then sizes from headers (the image
header, the stream header: padded pixel area, aspect ratio, substream lengths). Decoding the upload and
checking a stream (checksum, bounded inflate of the hints) run on the work pool; the progressive coding
loop runs in the version's procedure queues ("compress", "decompress"; family.py) on its worker thread.
Nothing request-sized runs on the event loop.

Both routes choose their version themselves (the compress route from `?quality=` or the form's quality, the
decompress route from the stream), so they build their `Call` with `resolve_version` rather than taking
`task_call`'s dependency.

Streams outlive model updates: /image/decompress picks the version whose weight hash is the stream's (the
served one when it matches, else an older version the model's version policy keeps loadable).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from starlette.datastructures import UploadFile

from families.imagecodec.bitstream import BitstreamError, StreamHeader
from families.imagecodec.codec import CodecModel, PreparedStream, SizeError, check_size, check_stream, prepare_stream
from families.imagecodec.contract import (
    COMPRESS_PROCEDURE,
    DECOMPRESS_PROCEDURE,
    DEFAULT_QUALITY,
    FAMILY_NAME,
    Preprocessing,
    level_name,
)
from families.images import upright_rgb
from families.manifest import Manifest
from service.errors import BadRequest, InvalidInput, NotFound, PayloadTooLarge, UnsupportedMediaType
from service.families.imagecodec.quality import CodecQuality
from service.families.imagecodec.schemas import (
    ACCEPTED_IMAGE_TYPES,
    COMPRESS_OPENAPI,
    COMPRESS_RESPONSES,
    DECOMPRESS_OPENAPI,
    DECOMPRESS_RESPONSES,
    IMAGE_MEDIA_TYPE,
    QUALITIES,
    STREAM_MEDIA_TYPE,
    UPLOAD_MAX_FIELDS,
    UPLOAD_MAX_FILES,
    UPLOAD_MEDIA_TYPE,
    compress_headers,
    model_headers,
)
from service.http.call import Call
from service.http.request import hub_of, resolve_version, workpool_of


@dataclass(frozen=True)
class CodecState:
    """What the plug-in prepares per loaded version (family.py): its manifest section, the coding procedure's
    model (identity, sizes, pmf tables) and the version's quality recorder."""

    preprocessing: Preprocessing
    model: CodecModel
    quality: CodecQuality


CodecCall = Call[CodecState]
router = APIRouter(prefix="/image", tags=["image"])


# ---- errors ------------------------------------------------------------------------------------------

def stream_error(exc: BitstreamError) -> Exception:
    """The service error of a bad stream: damage is 400, a stream for another model or format is 422."""
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


# ---- image decoding and encoding (work pool, worker thread) -------------------------------------------

def read_image(data: bytes, model: CodecModel) -> np.ndarray:
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
        rgb = upright_rgb(img)  # EXIF orientation applied, 16-bit grey scaled
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or damaged pixel data
        raise InvalidInput(f"field 'image' could not be decoded: {exc}", details={"field": "image"}) from exc
    return np.ascontiguousarray(rgb)



def png(image: np.ndarray) -> bytes:
    """The decoded image as PNG (on the version's worker thread: a large PNG takes a while to write)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def check_prepared(data: bytes, model: CodecModel) -> PreparedStream:
    """Checksum, bounded hints inflate and escape checks, on the work pool."""
    try:
        return prepare_stream(data, model)
    except BitstreamError as exc:
        raise stream_error(exc) from None


# ---- /image/compress ---------------------------------------------------------------------------------

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
        form = await request.form(max_files=UPLOAD_MAX_FILES, max_fields=UPLOAD_MAX_FIELDS)
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


def _served_levels(request: Request) -> dict[str, int | None]:
    """The served codec models and their quality levels (None: a model that names no level)."""
    return {v.name: v.prepared.preprocessing.quality for v in hub_of(request).serving()
            if v.manifest.family == FAMILY_NAME and isinstance(v.prepared, CodecState)}


def _compress_call(request: Request, model: str | None, quality: int | None, version: int | None) -> CodecCall:
    """The call to the model asked for (`?model=`, else imagecodec-q<quality>, else the model `imagecodec` when
    served, else the default level); 429 before any decoding when its compress queue is full. A level that is
    not installed is a 404 that names the installed ones."""
    if model:
        name = model
    elif quality is not None:
        name = level_name(quality)
    else:
        served_names = _served_levels(request)
        name = FAMILY_NAME if FAMILY_NAME in served_names or not served_names else level_name(DEFAULT_QUALITY)
    try:
        served = resolve_version(request, family=FAMILY_NAME, model=name, version=version)
    except NotFound as exc:
        if model or version is not None:
            raise
        levels = _served_levels(request)
        installed = ", ".join(f"{q} ({n})" if q is not None else n for n, q in sorted(levels.items())) or "none"
        what = f"quality level {quality}" if quality is not None else f"the default quality level {DEFAULT_QUALITY}"
        raise NotFound(f"{what} is not installed (no model {name!r}); installed: {installed}",
                       details={"field": "quality", "installed": sorted(levels)}) from exc
    served.batchers[COMPRESS_PROCEDURE].check_admission()
    return Call(request, served, served.prepared)


@router.post("/compress", response_class=Response, openapi_extra=COMPRESS_OPENAPI, responses=COMPRESS_RESPONSES)
async def compress(request: Request,
                   quality: int | None = Query(None, ge=1, le=6,
                                               description="quality level -> imagecodec-qN (or a form field)"),
                   model: str | None = Query(None, description="model name (overrides quality)"),
                   version: int | None = Query(None)) -> Response:
    """Compress an image (padded to a multiple of 64 internally, cropped on decode). The padded area is
    capped by the model's `max_pixels` (413) and its aspect ratio by `max_aspect` (400)."""
    if _media_type(request) != UPLOAD_MEDIA_TYPE:
        raise UnsupportedMediaType(f"content type {_media_type(request) or '(none)'!r}: send multipart/form-data "
                                   "with the image in field 'image'")
    with workpool_of(request).reserve("image upload"):  # 429 before the body is read; a place while it is
        # The model (hence its queue) is known from the query: refuse before reading the body.
        call = _compress_call(request, model, quality, version) if model or quality is not None else None
        data, form_quality = await _read_upload(request)
    if quality is not None and form_quality is not None and form_quality != quality:
        raise InvalidInput(f"quality {quality} in the query and {form_quality} in the form disagree",
                           details={"field": "quality"})
    if call is None:
        call = _compress_call(request, model, form_quality, version)
    else:
        call.version.batchers[COMPRESS_PROCEDURE].check_admission()  # it may have filled while the body arrived
    pixels = await call.work(read_image, data, call.state.model, what="image decode")
    stream, info = await call.submit(COMPRESS_PROCEDURE, pixels)
    headers = compress_headers(call.envelope(), info.bpp, pixels.shape[0], pixels.shape[1], info.hints)
    return Response(content=stream, media_type=STREAM_MEDIA_TYPE, headers=headers)


# ---- /image/decompress -------------------------------------------------------------------------------

def _model_hash(manifest: Manifest) -> str | None:
    """The weight hash a version's streams carry (lower-case hex), or None for a version not of this code."""
    if manifest.family != FAMILY_NAME:
        return None
    try:
        return manifest.preprocessing_as(Preprocessing).model_hash.lower()
    except ValueError:
        return None


async def _decoder_for(request: Request, header: StreamHeader, model: str | None, version: int | None) -> CodecCall:
    """The call to the loaded version that decodes this stream: the one asked for, else the one with the
    stream's weight hash (the served version when it matches, else an older one, loaded if the policy allows)."""
    name = model or header.model_name
    try:
        served = resolve_version(request, family=FAMILY_NAME, model=name, version=version)
    except NotFound as exc:
        # A stream of the single default of earlier releases (model `imagecodec`, now served as the level
        # imagecodec-q2): a served codec version with the stream's hash decodes it exactly. Any other unknown
        # name stays a mismatch: the name is part of what the stream claims.
        same = [v for v in hub_of(request).serving() if model is None and version is None
                and header.model_name == FAMILY_NAME
                and v.manifest.family == FAMILY_NAME and isinstance(v.prepared, CodecState)
                and v.prepared.model.model_hash == header.model_hash]
        if not same:
            raise InvalidInput(f"bitstream was made by model {header.model_name!r}: {exc.message}",
                               details={"reason": "model"}) from None
        served = same[0]
        request.state.model_name = served.name
        request.state.model_version = str(served.version)
    state: CodecState = served.prepared
    if version is not None or state.model.model_hash == header.model_hash:
        return Call(request, served, state)
    hub = hub_of(request)
    wanted = header.model_hash.hex()
    matches = [v for v, m in hub.manifests(name).items() if _model_hash(m) == wanted]
    if not matches:
        return Call(request, served, state)  # check_stream names the mismatch (422)
    try:
        loaded = await hub.acquire(name, max(matches))
    except NotFound as exc:
        raise InvalidInput(f"bitstream was made by {name!r} version {max(matches)} (hash {wanted}), which this "
                           f"server does not keep loadable: {exc.message}",
                           details={"reason": "model", "version": max(matches)}) from None
    request.state.model_name = loaded.name  # the metrics name the version that answered
    request.state.model_version = str(loaded.version)
    return Call(request, loaded, loaded.prepared)


@router.post("/decompress", response_class=Response, openapi_extra=DECOMPRESS_OPENAPI,
             responses=DECOMPRESS_RESPONSES)
async def decompress(request: Request, model: str | None = Query(None), version: int | None = Query(None)):
    """Decode a bitstream (raw request body, application/octet-stream). The model defaults to the one
    named in the stream, and the version to the one whose weights made it."""
    media_type = _media_type(request)
    if media_type not in ("", STREAM_MEDIA_TYPE):  # absent: RFC 9110 lets us assume octet-stream
        raise UnsupportedMediaType(f"content type {media_type!r}: send the bitstream as {STREAM_MEDIA_TYPE}")
    with workpool_of(request).reserve("bitstream"):
        data = await request.body()
    if not data:
        raise BadRequest(f"empty body: send the bitstream bytes as {STREAM_MEDIA_TYPE}")
    try:
        header = StreamHeader.peek(data)
        call = await _decoder_for(request, header, model, version)
        check_stream(header, call.state.model)  # size, aspect and substream lengths: refused before any work
    except BitstreamError as exc:
        raise stream_error(exc) from None
    call.version.batchers[DECOMPRESS_PROCEDURE].check_admission()
    prepared = await call.work(check_prepared, data, call.state.model, what="bitstream check")
    image = await call.submit(DECOMPRESS_PROCEDURE, prepared)
    return Response(content=image, media_type=IMAGE_MEDIA_TYPE, headers=model_headers(call.envelope()))
