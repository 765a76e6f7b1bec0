"""Request and response models of `POST /water/reconstruct`, its limits, and the example request.

Per sample the client sends the three grids [T][H][W] and two series [T_v] in physical units, missing values
as null (or marked in an explicit `masks` entry), plus the static attributes. Shapes are checked against the
served version's manifest (routes.py).
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from families.water.contract import Grid, Preprocessing
from families.water.preprocessing import IMAGE_MODALITIES, STATIC_NAMES, VECTOR_MODALITIES

MAX_SAMPLES_PER_REQUEST = 64
MAX_JSON_VALUES = 4_000_000  # absolute cap per request (~300 MB parsed): 2 full-size 290x180 samples with masks
MAX_EXAMPLE_GRID_VALUES = 4096  # larger grids are left out of the example (a missing modality is allowed)
GridValues = list[list[list[float | None]]]
SeriesValues = list[float | None]
# What the routes enforce on every model (routes.py checks shapes against the manifest, 422 naming the field),
# in the OpenAPI document only: no empty axis (a grid is [T][H][W], a series [T_v]), and the static attributes
# are numbers, at most the known ones (issue 26 item 13). The served sizes vary by model; see the example.
_NON_EMPTY = {"minItems": 1}


def _nested(leaf: Any, depth: int) -> Any:
    """`depth` nested non-empty lists of `leaf` (as documented; validation by the route)."""
    kind = leaf
    for _ in range(depth):
        kind = Annotated[list[kind], Field(json_schema_extra=_NON_EMPTY)]  # type: ignore[valid-type]
    return kind


GridDoc = _nested(float | None, 3)
SeriesDoc = _nested(float | None, 1)
MaskGridDoc = _nested(bool, 3)
MaskSeriesDoc = _nested(bool, 1)


class WaterMasks(BaseModel):
    """Optional explicit masks (true = missing, reconstruct it), same shapes as the fields."""

    model_config = ConfigDict(extra="forbid")
    precip: MaskGridDoc | None = None
    soil: MaskGridDoc | None = None
    temp: MaskGridDoc | None = None
    evap: MaskSeriesDoc | None = None
    riverflow: MaskSeriesDoc | None = None


class WaterSample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    precip: GridDoc | None = Field(None, description="precipitation [T][H][W] in mm/day; null = missing "
                                   "(omit the field when the whole grid is missing)")
    soil: GridDoc | None = Field(None, description="soil moisture [T][H][W] in m3/m3")
    temp: GridDoc | None = Field(None, description="temperature [T][H][W] in degC")
    evap: SeriesDoc | None = Field(None, description="evaporation series [T_v] in mm/day")
    riverflow: SeriesDoc | None = Field(None, description="river flow series [T_v] in mm/day")
    static: list[float] = Field(..., json_schema_extra={"minItems": 1, "maxItems": len(STATIC_NAMES)},
                                description=f"the model's static attributes (at most {len(STATIC_NAMES)}, in "
                                "this order): " + ", ".join(STATIC_NAMES))
    masks: WaterMasks | None = None


class ReconstructRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"samples": [{
            "precip": [[[0.0, None], [1.2, 0.4]]], "soil": [[[0.21, 0.2], [None, 0.19]]],
            "temp": [[[12.5, 12.1], [11.8, None]]], "evap": [1.1, None, 0.9], "riverflow": [0.5, 0.6, None],
            "static": [850.0, 640.0, 0.5, 1.1, 0.4, 1.2, 0.35, 2.0, 0.45, 0.85, 47.0]}]}]},
    )
    samples: list[WaterSample] = Field(..., min_length=1, max_length=MAX_SAMPLES_PER_REQUEST)


class ReconstructedSample(BaseModel):
    precip: GridValues
    soil: GridValues
    temp: GridValues
    evap: SeriesValues
    riverflow: SeriesValues
    mask: dict[str, Any] = Field(description="per modality, true where a value was missing and has been filled")
    hidden: dict[str, Any] = Field(description="per modality, the patches [T][H/p][W/p] / steps [T_v] "
                                   "hidden from the model")


class ReconstructResponse(BaseModel):
    model: str
    version: int
    units: dict[str, str]
    samples: list[ReconstructedSample]


def max_json_values(grid: Grid) -> int:
    """The most JSON values (commas + 1) a valid request to a model of `grid` can hold: per sample every grid
    and series twice (values and masks; a grid's commas are T*H*(W+1) + T at most), the static attributes,
    keys; never more than MAX_JSON_VALUES."""
    per_grid = grid.frames * grid.height * (grid.width + 1) + grid.frames
    per_sample = 2 * (len(IMAGE_MODALITIES) * per_grid + len(VECTOR_MODALITIES) * grid.series_len) + grid.n_static + 16
    return min(MAX_SAMPLES_PER_REQUEST * per_sample + 16, MAX_JSON_VALUES)


def reconstruct_example(pre: Preprocessing) -> dict[str, Any]:
    """One sample in the served model's sizes: the series (and grids, when small) at the training means
    with a few gaps, and the static attributes at their means."""
    grid, stats = pre.grid, pre.stats
    sample: dict[str, Any] = {}
    if grid.frames * grid.height * grid.width <= MAX_EXAMPLE_GRID_VALUES:
        for m in IMAGE_MODALITIES:
            values = np.full(grid.shape(m), round(stats.mean[m], 3)).tolist()
            values[0][0][0] = None
            sample[m] = values
    for m in VECTOR_MODALITIES:
        sample[m] = [None if t % 4 == 3 else round(stats.mean[m], 3) for t in range(grid.series_len)]
    sample["static"] = [round(float(v), 3) for v in stats.static_mean[: grid.n_static]]
    return {"samples": [sample]}
