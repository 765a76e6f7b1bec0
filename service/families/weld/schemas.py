"""Request and response models of the weld routes, their limits, and the example request.

`POST /weld/classify` and `POST /weld/gallery` take the same samples: uploads of the real file formats
(multipart/form-data, fields described in routes.py) or ready tensors (JSON, `TensorRequest`). Tensor shapes
are checked against the served version's manifest on the raw bytes (service/families/weld/jsontensors.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from families.weld.classes import CLASSES
from families.weld.preprocessing import SENSOR_COLUMNS, PreprocessParams

MAX_SAMPLES = 64
MAX_K = 100
MAX_TEXT_CHARS = 256  # id and label
MAX_TEXT_PART_BYTES = 16 * 1024  # a multipart text part (id, label): starlette refuses larger ones (413)
MAX_EXAMPLE_VALUES = 50_000  # zeros of every modality; a larger model's example would be megabytes


# The tensors are read from the raw bytes and checked against the served version's shapes (jsontensors.py), ids
# and labels by routes.py, so the pydantic types stay loose; the OpenAPI document carries the rules that hold
# for every model (issue 26 item 13): nested arrays of numbers of the right rank, RGB channels, the sensor
# columns, the id's length and characters (no Cc, Zl, Zp: the pattern; lone surrogates cannot be in valid
# JSON text), the class names.
_NO_CONTROL = "^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029]*$"


def _tensor_doc(*sizes: int | None) -> dict[str, Any]:
    """A nested array of numbers, one level per axis; a fixed `size` where every model has it."""
    schema: dict[str, Any] = {"type": "number"}
    for size in reversed(sizes):
        schema = {"type": "array", "items": schema, "minItems": size or 1, **({"maxItems": size} if size else {})}
    return schema


class TensorSample(BaseModel):
    """One sample as preprocessed tensors (the shapes of the served version's manifest `inputs`)."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, json_schema_extra={"maxLength": MAX_TEXT_CHARS, "pattern": _NO_CONTROL},
                           description=f"client id, echoed in the result (required to enrol; at most "
                           f"{MAX_TEXT_CHARS} characters, no control characters)")
    label: str | None = Field(None, json_schema_extra={"enum": [*CLASSES, None]},
                              description="class name (enrolment only; case and separators are not significant)")
    video: Any = Field(None, json_schema_extra=_tensor_doc(None, 3, None, None),
                       description="[T][3][S][S] normalised frames")
    photos: Any = Field(None, json_schema_extra=_tensor_doc(None, 3, None, None),
                        description="[P][3][S][S] normalised photos")
    audio: Any = Field(None, json_schema_extra=_tensor_doc(None, None),
                       description="[L][M] normalised log-mel fbank (time x mel)")
    sensors: Any = Field(None, json_schema_extra=_tensor_doc(None, len(SENSOR_COLUMNS)),
                         description=f"[N][{len(SENSOR_COLUMNS)}] standardised sensor channels")


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


# The multipart form as OpenAPI sees it (the JSON alternative is `TensorRequest`); fields of one sample (routes.py
# also takes `<field>.<i>` for sample i).
MULTIPART_BODY_DOC = {"schema": {"type": "object", "properties": {
    "video": {"type": "string", "format": "binary"},
    "photos": {"type": "array", "items": {"type": "string", "format": "binary"}},
    "audio": {"type": "string", "format": "binary"},
    "sensors": {"type": "string", "format": "binary"},
    "id": {"type": "string", "maxLength": MAX_TEXT_CHARS, "pattern": _NO_CONTROL},
    "label": {"type": "string", "enum": list(CLASSES)}}}}


def classify_example(params: PreprocessParams) -> dict[str, Any] | None:
    """One JSON-tensor sample of zeros in the served model's shapes (None when too large to show)."""
    shapes = params.shapes()
    if sum(int(np.prod(s)) for s in shapes.values()) > MAX_EXAMPLE_VALUES:
        return None
    return {"samples": [{"id": "example-1", **{m: np.zeros(s, np.float32).tolist() for m, s in shapes.items()}}]}
