"""Request and response models of the weld routes, their limits, and the example request.

`POST /weld/classify` and `POST /weld/gallery` take the same samples: uploads of the real file formats
(multipart/form-data, fields described in routes.py) or ready tensors (JSON, `TensorRequest`). Tensor shapes
are checked against the served version's manifest on the raw bytes (service/jsontensors.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from families.weld.preprocessing import PreprocessParams

MAX_SAMPLES = 64
MAX_K = 100
MAX_TEXT_CHARS = 256  # id and label
MAX_TEXT_PART_BYTES = 16 * 1024  # a multipart text part (id, label): starlette refuses larger ones (413)
MAX_EXAMPLE_VALUES = 50_000  # zeros of every modality; a larger model's example would be megabytes


class TensorSample(BaseModel):
    """One sample as preprocessed tensors (the shapes of the served version's manifest `inputs`)."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, description=f"client id, echoed in the result (required to enrol; at most "
                                              f"{MAX_TEXT_CHARS} characters, no control characters)")
    label: str | None = Field(None, description="class name (enrolment only)")
    video: Any = Field(None, description="[T][3][S][S] normalised frames")
    photos: Any = Field(None, description="[P][3][S][S] normalised photos")
    audio: Any = Field(None, description="[L][M] normalised log-mel fbank (time x mel)")
    sensors: Any = Field(None, description="[N][6] standardised sensor channels")


class TensorRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"samples": [{
        "id": "weld-1", "video": "[[[[...]]]]", "photos": "[[[[...]]]]", "audio": "[[...]]",
        "sensors": "[[...]]"}]}]})
    samples: list[TensorSample] = Field(..., min_length=1, max_length=MAX_SAMPLES)


class Neighbour(BaseModel):
    id: str
    label: str
    distance: float


class SampleResult(BaseModel):
    id: str | None
    predicted_class: str = Field(alias="class")
    votes: dict[str, float] = Field(description="share of the k neighbours per class (sums to 1)")
    neighbours: list[Neighbour]

    model_config = ConfigDict(populate_by_name=True)


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model": "weld", "version": 1, "k": 5, "metric": "cosine", "gallery_size": 185,
        "results": [{"id": "weld-1", "class": "Porosity", "votes": {"Porosity": 0.8, "Spatter": 0.2},
                     "neighbours": [{"id": "08-17-22-0000/08-17-22-0000-00012", "label": "Porosity",
                                     "distance": 0.031}]}]}]})
    model: str
    version: int
    k: int
    metric: str
    gallery_size: int
    results: list[SampleResult]


class EnrolResponse(BaseModel):
    model: str
    version: int
    enrolled: list[str]
    gallery_size: int



class GalleryResponse(BaseModel):
    model: str
    version: int
    size: int
    shipped: int
    enrolled: int
    per_class: dict[str, int]


# The multipart form as OpenAPI sees it (the JSON alternative is `TensorRequest`).
MULTIPART_BODY_DOC = {"schema": {"type": "object", "properties": {
    "video": {"type": "string", "format": "binary"},
    "photos": {"type": "array", "items": {"type": "string", "format": "binary"}},
    "audio": {"type": "string", "format": "binary"},
    "sensors": {"type": "string", "format": "binary"}}}}


def classify_example(params: PreprocessParams) -> dict[str, Any] | None:
    """One JSON-tensor sample of zeros in the served model's shapes (None when too large to show)."""
    shapes = params.shapes()
    if sum(int(np.prod(s)) for s in shapes.values()) > MAX_EXAMPLE_VALUES:
        return None
    return {"samples": [{"id": "example-1", **{m: np.zeros(s, np.float32).tolist() for m, s in shapes.items()}}]}
