"""Water family: gap filling of multimodal hydrology fields (POST /water/reconstruct)."""

from __future__ import annotations

from service.families.water.family import WaterFamily

FAMILY = WaterFamily()

__all__ = ["FAMILY", "WaterFamily"]
