"""The weld family's settings (`SERVICE_WELD_*`): where enrolled references live, when the gallery is searched
through FAISS, and the window of the out-of-distribution gauge (docs/quality.md)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from service.settings import FamilySettings


class WeldSettings(FamilySettings):
    model_config = SettingsConfigDict(env_prefix="SERVICE_WELD_", extra="ignore")
    legacy_env: ClassVar[dict[str, str]] = {
        "gallery_url": "SERVICE_GALLERY_URL",
        "quality_ood_window": "SERVICE_QUALITY_OOD_WINDOW",
    }

    # Enrolled references (families/weld/gallery_db.py): empty = SQLite at `<state_dir>/gallery.sqlite3`,
    # `sqlite:///<path>` another SQLite file, `postgresql://...` a PostgreSQL database shared by every replica.
    gallery_url: str = ""
    # A gallery of at least this many references (shipped + enrolled) is searched through an exact FAISS index
    # (faiss-cpu, the `faiss` extra; CPU serving only) instead of torch's matmul + top-k; 0 = never.
    faiss_min: int = Field(0, ge=0)
    quality_ood_window: int = Field(256, ge=1, description="recent samples behind quality_ood_ratio")
