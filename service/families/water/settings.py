"""The water family's settings (`SERVICE_WATER_*`): the share of requests reconstructed a second time with a
few visible values hidden, to measure the error live (docs/quality.md)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from service.settings import FamilySettings


class WaterSettings(FamilySettings):
    model_config = SettingsConfigDict(env_prefix="SERVICE_WATER_", extra="ignore")
    legacy_env: ClassVar[dict[str, str]] = {"quality_selfcheck_fraction": "SERVICE_QUALITY_WATER_SELFCHECK_FRACTION"}

    quality_selfcheck_fraction: float = Field(0.05, ge=0, le=1, description="requests self-checked")
