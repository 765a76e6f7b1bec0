"""Model families known to the service, discovered from the sub-packages of this package.

Each sub-package `service/families/<name>/` exposes `FAMILY`, an instance of `service.families.base.Family`.
Training code imports shared preprocessing from these sub-packages, so neither this package nor theirs
imports anything heavy: each builds `FAMILY` on first access (`lazy_family`), and the web stack is only
loaded by `discover`. Training therefore runs where fastapi is not installed (a bare GPU machine).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.families.base import Family


def lazy_family(package: str, family_class: str) -> Callable[[str], Any]:
    """A module `__getattr__` (PEP 562) for a family package: `FAMILY` is an instance of `family_class`
    ("module:Class"), imported and built on first access and then cached in the package."""

    def __getattr__(name: str) -> Any:
        if name != "FAMILY":
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module_name, class_name = family_class.split(":")
        family = getattr(importlib.import_module(module_name), class_name)()
        importlib.import_module(package).FAMILY = family
        return family

    return __getattr__


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
