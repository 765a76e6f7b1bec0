"""How many model instances (sessions and worker threads) a version gets: `SERVICE_INSTANCES` over the manifest."""

from __future__ import annotations

from families.manifest import Manifest
from service.settings import Settings


def instance_count_for(manifest: Manifest, settings: Settings) -> int:
    """Model instances of `manifest`'s model: SERVICE_INSTANCES ("N" or "model=N,...") over the manifest."""
    override = parse_instances(settings.instances)
    count = override.get(manifest.name, override.get("*", 0))
    return count or manifest.batching.instance_count


def parse_instances(text: str) -> dict[str, int]:
    """"2" -> {"*": 2}; "tiny=2,traffic=1" -> {"tiny": 2, "traffic": 1}; ValueError naming the setting."""
    found: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, count = part.rpartition("=")
        if not count.isdigit() or not 0 <= int(count) <= 16:
            raise ValueError(f"SERVICE_INSTANCES: {part!r} must be N or model=N with 0 <= N <= 16")
        found[name.strip() or "*"] = int(count)
    return found
