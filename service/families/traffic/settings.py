"""The traffic family's settings (`SERVICE_TRAFFIC_*`): the served forecasts kept per model version to score
against observations (docs/quality.md), bounded by count, memory and age."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from service.settings import FamilySettings


class TrafficSettings(FamilySettings):
    model_config = SettingsConfigDict(env_prefix="SERVICE_TRAFFIC_", extra="ignore")
    legacy_env: ClassVar[dict[str, str]] = {
        "quality_forecasts": "SERVICE_QUALITY_FORECASTS",
        "quality_forecasts_mb": "SERVICE_QUALITY_FORECASTS_MB",
        "quality_forecast_ttl_s": "SERVICE_QUALITY_FORECAST_TTL_S",
    }

    quality_forecasts: int = Field(1024, ge=0, description="forecast windows kept per version; 0 = off")
    quality_forecasts_mb: float = Field(64.0, gt=0, description="memory bound of the kept forecasts per version")
    quality_forecast_ttl_s: float = Field(7200.0, gt=0, description="seconds a kept forecast waits for actuals")
