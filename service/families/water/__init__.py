"""Water family: gap filling of multimodal hydrology fields (POST /water/reconstruct)."""

from service.families import lazy_family

__getattr__ = lazy_family(__name__, "service.families.water.family:WaterFamily")
