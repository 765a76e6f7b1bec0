"""The image codec family: routes and per-version preparation (the codec tables and graphs)."""

from __future__ import annotations

from fastapi import APIRouter

from service.plugin import FamilyPlugin as Family  # transitional


class ImageCodecFamily(Family):
    name = "imagecodec"

    def router(self) -> APIRouter:
        from service.families.imagecodec.routes import build_router

        return build_router()

    def prepare(self, version) -> None:
        from service.families.imagecodec.routes import prepare_version

        prepare_version(version)
PLUGIN = ImageCodecFamily()
