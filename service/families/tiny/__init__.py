"""The tiny test model: served through /v2 only (no task routes, no prepared state)."""

from __future__ import annotations

from service.plugin import FamilySpec

SPEC = FamilySpec("tiny", oip_example_first=True)  # the smallest model: /docs' /v2 infer example
