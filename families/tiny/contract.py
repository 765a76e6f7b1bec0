"""What a tiny version's manifest says beyond its graph: nothing (it is served through /v2 only)."""

from __future__ import annotations

from pydantic import ConfigDict

from families.manifest import PreprocessingSection


class Preprocessing(PreprocessingSection):
    """The tiny model reads its input tensor as is."""

    model_config = ConfigDict(extra="forbid")
