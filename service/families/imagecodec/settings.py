"""The image codec's settings (`SERVICE_IMAGECODEC_*`): the share of compressions decoded again to measure their
PSNR (docs/quality.md)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from service.settings import FamilySettings


class ImagecodecSettings(FamilySettings):
    model_config = SettingsConfigDict(env_prefix="SERVICE_IMAGECODEC_", extra="ignore")
    legacy_env: ClassVar[dict[str, str]] = {"quality_psnr_fraction": "SERVICE_QUALITY_CODEC_PSNR_FRACTION"}

    quality_psnr_fraction: float = Field(0.05, ge=0, le=1, description="compressions also decoded for PSNR")
