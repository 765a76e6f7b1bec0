"""The service side of the model families, one folder each (see service/plugin.py): `SPEC` (the declaration) in
its `__init__.py`, `PLUGIN` in its `family.py`, and whatever else it needs beside them (routes, schemas, settings,
metrics, quality monitors, parsers).

Which families exist is `families.registry.REGISTRY`; `specs()` reads each one's declaration (cheap: no model
code), `plugins()` loads each one's plug-in.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

from families.registry import REGISTRY

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from service.plugin import FamilyPlugin, FamilySpec


@cache
def specs() -> dict[str, FamilySpec]:
    """Every registered family's declaration, by family name, in registration order."""
    found = {name: entry.load("spec") for name, entry in REGISTRY.items()}
    for name, spec in found.items():
        if spec.name != name:
            raise RuntimeError(f"{REGISTRY[name].path('spec')} declares {spec.name!r}, not {name!r}")
    return found


def plugins() -> dict[str, FamilyPlugin]:
    """Every registered family's plug-in, by family name."""
    loaded = {name: entry.load("service") for name, entry in REGISTRY.items()}
    for name, plugin in loaded.items():
        if plugin.spec is not specs()[name]:
            raise RuntimeError(f"{REGISTRY[name].path('service')} does not carry {REGISTRY[name].path('spec')}")
    return loaded


def metric_builders() -> dict[str, Callable[[CollectorRegistry], Any]]:
    """Each family's own series builder (`FamilySpec.metrics`), for `service.metrics.Metrics`."""
    return {name: spec.metrics for name, spec in specs().items() if spec.metrics is not None}


def description() -> str:
    """The service's one-line description (OpenAPI, /docs): what the families do, from their summaries."""
    phrases = [spec.summary for spec in specs().values() if spec.summary]
    tasks = ", ".join(phrases[:-1]) + (" and " if len(phrases) > 1 else "") + phrases[-1] if phrases else "Models"
    return (tasks[:1].upper() + tasks[1:] + " behind task endpoints and the Open Inference Protocol v2.")
