"""Traffic forecasting family: `POST /traffic/forecast` on a model exported from training/traffic.

`FAMILY` is built on first access (PEP 562), so that training code can import the shared preprocessing
(`service.families.traffic.preprocessing`) without pulling in the web stack.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "FAMILY":
        from service.families.traffic.family import TrafficFamily

        family = TrafficFamily()
        globals()["FAMILY"] = family
        return family
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
