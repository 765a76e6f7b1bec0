"""Model families known to the service, discovered from the sub-packages of this package.

Each sub-package `service/families/<name>/` exposes `FAMILY`, an instance of `service.families.base.Family`.
Training code imports shared preprocessing from these sub-packages, so this package itself imports nothing
heavy (the web stack is only loaded by `discover`).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.families.base import Family


def discover() -> dict[str, Family]:
    from service.families.base import Family

    families: dict[str, Family] = {}
    for module in pkgutil.iter_modules(__path__):
        if not module.ispkg:
            continue
        package = importlib.import_module(f"{__name__}.{module.name}")
        family = getattr(package, "FAMILY", None)
        if isinstance(family, Family):
            families[family.name] = family
    return families
