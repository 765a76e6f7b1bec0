"""What the codec routes accept and answer: media types, quality levels, the upload's OpenAPI schema and the
response headers. Both routes carry binary bodies (a multipart image upload, a bitstream, a PNG), so there
are no JSON models; the limits on sizes come from the served version's manifest (`max_pixels`,
`max_aspect`; families/imagecodec/contract.py) and are checked on headers before any pixel is decoded.
"""

from __future__ import annotations

from typing import Any

ACCEPTED_IMAGE_TYPES = ("JPEG", "PNG")  # Pillow formats an upload may have
UPLOAD_MEDIA_TYPE = "multipart/form-data"
STREAM_MEDIA_TYPE = "application/octet-stream"
IMAGE_MEDIA_TYPE = "image/png"
QUALITIES = range(1, 7)  # quality level N -> model imagecodec-qN
UPLOAD_MAX_FILES = 1
UPLOAD_MAX_FIELDS = 2  # image, quality

UPLOAD_SCHEMA: dict[str, Any] = {"type": "object", "required": ["image"], "properties": {
    "image": {"type": "string", "format": "binary", "description": "PNG or JPEG photo"},
    "quality": {"type": "integer", "minimum": 1, "maximum": 6, "description": "quality level -> imagecodec-qN"},
}}
COMPRESS_OPENAPI: dict[str, Any] = {"requestBody": {"required": True,
                                                    "content": {UPLOAD_MEDIA_TYPE: {"schema": UPLOAD_SCHEMA}}}}
COMPRESS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {STREAM_MEDIA_TYPE: {}},
          "description": "the self-describing HPCM bitstream (headers carry bpp and model)"}}
DECOMPRESS_OPENAPI: dict[str, Any] = {"requestBody": {"required": True, "content": {STREAM_MEDIA_TYPE: {}}}}
DECOMPRESS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {IMAGE_MEDIA_TYPE: {}}, "description": "the decoded image"}}


def model_headers(envelope: dict[str, Any]) -> dict[str, str]:
    """The response envelope of a binary answer: which model and version answered, as headers."""
    return {"X-Model": envelope["model"], "X-Model-Version": str(envelope["version"])}


def compress_headers(envelope: dict[str, Any], bpp: float, height: int, width: int, hints: int) -> dict[str, str]:
    """Headers of a compression: the envelope, bits per pixel, the image size and the scale hints written."""
    return {**model_headers(envelope), "X-Bpp": f"{bpp:.5f}", "X-Image-Size": f"{width}x{height}",
            "X-Scale-Hints": str(hints)}
