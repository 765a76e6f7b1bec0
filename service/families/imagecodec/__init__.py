"""Image compression family: HPCM codec with RWKV context cells.

Model naming: one model per quality level, `imagecodec-q1` .. `imagecodec-q6` (higher = more bits);
`make serve` ships the default model `imagecodec` (one quality level). Routes: POST /image/compress,
POST /image/decompress (see routes.py).
"""

from __future__ import annotations

from fastapi import APIRouter

from service.families.base import Family


class ImageCodecFamily(Family):
    name = "imagecodec"

    def router(self) -> APIRouter:
        from service.families.imagecodec.routes import build_router

        return build_router()

    def prepare(self, version) -> None:
        from service.families.imagecodec.routes import prepare_version

        prepare_version(version)


FAMILY = ImageCodecFamily()
