"""The service plug-ins of the model families, one folder each with the same files (see service/plugin.py).

Which families exist is `families.registry.REGISTRY`; `plugins()` loads each one's `PLUGIN`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from families.registry import REGISTRY

if TYPE_CHECKING:
    from service.plugin import FamilyPlugin


def plugins() -> dict[str, FamilyPlugin]:
    """Every registered family's plug-in, by family name."""
    loaded = {name: entry.load("service") for name, entry in REGISTRY.items()}
    for name, plugin in loaded.items():
        if plugin.name != name:
            raise RuntimeError(f"{REGISTRY[name].path('service')} is the plug-in of {plugin.name!r}, not {name!r}")
    return loaded
