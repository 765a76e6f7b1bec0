"""`POST /weld/classify` and `POST /weld/gallery` (admin): k-NN weld defect classification.

A request holds one or more samples, either as uploads of the real file formats (multipart/form-data) or
as ready tensors (JSON). Uploads are decoded and preprocessed by `preprocessing.preprocess_sample`, the
same function training uses. Embeddings come from the exported model through the dynamic batcher; the
k-NN search is exact (one matrix product + top-k) on the serving device.

Multipart fields, per sample i (the suffix `.i` may be omitted for a single sample):
    video[.i]    one .avi            photos[.i]   the photos (.jpg), one part each, ordered by file name
    audio[.i]    one .flac           sensors[.i]  one sensor .csv
    id[.i]       optional sample id  label[.i]    class name (enrolment only)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from service.auth import require_admin
from service.errors import BadRequest, Conflict, InvalidInput, UnsupportedMediaType
from service.families.base import Family, request_context, resolve_version
from service.families.weld.classes import CLASSES, match_class
from service.families.weld.gallery import DuplicateIds, GalleryStore
from service.families.weld.knn import METRICS
from service.families.weld.preprocessing import (
    MODALITIES,
    ModalityError,
    PreprocessParams,
    SampleFiles,
    check_tensors,
    preprocess_sample,
    warm_up,
)

if TYPE_CHECKING:
    from service.repository import LoadedVersion

MAX_SAMPLES = 64
MAX_K = 100
_FIELD = re.compile(r"^(video|photos|audio|sensors|id|label)(?:\.(\d{1,3}))?$")


@dataclass
class WeldState:
    params: PreprocessParams
    k: int
    metric: str
    gallery: GalleryStore


# ---- request / response models -----------------------------------------------------------------------

class TensorSample(BaseModel):
    """One sample as preprocessed tensors (the shapes of the served version's manifest `inputs`)."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, description="client id, echoed in the result")
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


# ---- parsing -----------------------------------------------------------------------------------------

@dataclass
class ParsedSample:
    index: int
    tensors: dict[str, np.ndarray]
    id: str | None
    label: str | None


def _fail(index: int, modality: str, message: str) -> InvalidInput:
    return InvalidInput(f"sample {index}: {modality}: {message}", details={"sample": index, "modality": modality})


async def _read_multipart(request: Request, params: PreprocessParams) -> list[tuple[int, SampleFiles, dict]]:
    try:
        form = await request.form(max_files=MAX_SAMPLES * (params.num_photos + 3), max_fields=4 * MAX_SAMPLES)
    except Exception as exc:  # noqa: BLE001 - malformed multipart bodies raise several types
        raise BadRequest(f"malformed multipart body ({exc})") from None
    files: dict[int, SampleFiles] = {}
    meta: dict[int, dict] = {}
    for key, value in form.multi_items():
        match = _FIELD.match(key)
        if not match:
            raise InvalidInput(f"unknown form field {key!r}; expected video, photos, audio, sensors, id, label "
                               "with an optional '.<sample index>' suffix", details={"field": key})
        name, index = match.group(1), int(match.group(2) or 0)
        sample = files.setdefault(index, SampleFiles())
        if name in ("id", "label"):
            if isinstance(value, UploadFile):
                raise InvalidInput(f"form field {key!r} must be text, not a file", details={"field": key})
            meta.setdefault(index, {})[name] = str(value)
            continue
        if not isinstance(value, UploadFile):
            raise _fail(index, name, f"form field {key!r} must be a file upload")
        data = await value.read()
        if name == "photos":
            sample.photos.append((value.filename or "", data))  # type: ignore[arg-type]
        elif getattr(sample, name) is not None:
            raise _fail(index, name, f"more than one {name} file")
        else:
            setattr(sample, name, data)
    if not files:
        raise InvalidInput("no sample in the form; send video, photos, audio and sensors files")
    if len(files) > MAX_SAMPLES:
        raise InvalidInput(f"at most {MAX_SAMPLES} samples per request, got {len(files)}")
    out = []
    for index in sorted(files):
        sample = files[index]
        # Training reads images/*.jpg sorted by file name: uploads are ordered the same way.
        sample.photos = [data for _, data in sorted(sample.photos, key=lambda item: item[0])]  # type: ignore[misc]
        out.append((index, sample, meta.get(index, {})))
    return out


def _decode_uploads(items: list[tuple[int, SampleFiles, dict]], params: PreprocessParams) -> list[ParsedSample]:
    parsed = []
    for index, files, meta in items:
        try:
            tensors = preprocess_sample(files, params)
        except ModalityError as exc:
            raise _fail(index, exc.modality, exc.message) from None
        parsed.append(ParsedSample(index, tensors, meta.get("id"), meta.get("label")))
    return parsed


def _check_json(body: TensorRequest, params: PreprocessParams) -> list[ParsedSample]:
    parsed = []
    for index, sample in enumerate(body.samples):
        try:
            tensors = check_tensors({m: getattr(sample, m) for m in MODALITIES}, params)
        except ModalityError as exc:
            raise _fail(index, exc.modality, exc.message) from None
        parsed.append(ParsedSample(index, tensors, sample.id, sample.label))
    return parsed


async def _parse(request: Request, params: PreprocessParams) -> list[ParsedSample]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        items = await _read_multipart(request, params)
        return await run_in_threadpool(_decode_uploads, items, params)
    if content_type == "application/json":
        raw = await request.body()
        try:
            body = TensorRequest.model_validate_json(raw)
        except ValueError as exc:
            errors = getattr(exc, "errors", lambda: [])()
            if any(e.get("type") == "json_invalid" for e in errors):
                raise BadRequest("request body is not valid JSON") from None
            raise InvalidInput(f"invalid request: {str(exc).splitlines()[0]}",
                               details=[{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in errors]
                               ) from None
        return await run_in_threadpool(_check_json, body, params)
    raise UnsupportedMediaType(f"content type {content_type or '(none)'!r}: send multipart/form-data uploads "
                               "or application/json tensors")


async def _embed(version: LoadedVersion, samples: list[ParsedSample], request: Request) -> np.ndarray:
    inputs = {m: np.stack([s.tensors[m] for s in samples]).astype(np.float32) for m in MODALITIES}
    outputs = await version.infer(inputs, ctx=request_context(request))
    return outputs["embedding"]


def _state(version: LoadedVersion) -> WeldState:
    return version.state["weld"]


# ---- the family --------------------------------------------------------------------------------------

class WeldFamily(Family):
    name = "weld"

    def prepare(self, version: LoadedVersion) -> None:
        pre = version.manifest.preprocessing
        knn = pre.get("knn", {})
        gallery = GalleryStore(version.asset_path(knn.get("gallery", "gallery.npz")), version.state_dir,
                               version.device, num_classes=len(CLASSES))
        params = PreprocessParams.from_dict(pre["params"])
        warm_up(params)
        version.state["weld"] = WeldState(params=params, k=int(knn.get("k", 5)),
                                          metric=knn.get("metric", "cosine"), gallery=gallery)

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/weld", tags=["weld"])

        @router.post("/classify", response_model=ClassifyResponse, response_model_by_alias=True,
                     openapi_extra={"requestBody": {"content": {
                         "multipart/form-data": {"schema": {"type": "object", "properties": {
                             "video": {"type": "string", "format": "binary"},
                             "photos": {"type": "array", "items": {"type": "string", "format": "binary"}},
                             "audio": {"type": "string", "format": "binary"},
                             "sensors": {"type": "string", "format": "binary"}}}},
                         "application/json": {"schema": TensorRequest.model_json_schema()}}}})
        async def classify(request: Request, model: str | None = Query(None), version: int | None = Query(None),
                           k: int | None = Query(None, ge=1, le=MAX_K),
                           metric: str | None = Query(None, description="cosine | euclidean | manhattan")):
            """Classify weld samples (uploads of .avi/.jpg/.flac/.csv, or ready tensors) by k-NN."""
            served = resolve_version(request, family="weld", model=model, version=version)
            state = _state(served)
            if metric is not None and metric not in METRICS:
                raise InvalidInput(f"metric must be one of {METRICS}, got {metric!r}", details={"field": "metric"})
            samples = await _parse(request, state.params)
            embeddings = await _embed(served, samples, request)
            gallery = state.gallery.snapshot  # one consistent view for the whole request
            use_k = min(k or state.k, gallery.size)
            result = await run_in_threadpool(gallery.search, embeddings, use_k, metric or state.metric, len(CLASSES))
            results = []
            for row, sample in enumerate(samples):
                votes = {CLASSES[c]: round(float(v), 6) for c, v in enumerate(result.votes[row]) if v > 0}
                neighbours = [Neighbour(id=str(gallery.ids[i]), label=CLASSES[int(gallery.label_list[i])],
                                        distance=float(d))
                              for i, d in zip(result.indices[row], result.distances[row], strict=True)]
                results.append(SampleResult(id=sample.id, **{"class": CLASSES[int(result.predictions[row])]},
                                            votes=votes, neighbours=neighbours))
            return ClassifyResponse(model=served.name, version=served.version, k=use_k,
                                    metric=metric or state.metric, gallery_size=gallery.size, results=results)

        @router.post("/gallery", response_model=EnrolResponse, dependencies=[Depends(require_admin)])
        async def enrol(request: Request, model: str | None = Query(None), version: int | None = Query(None)):
            """Enrol labelled samples (same inputs as /weld/classify plus `label` and `id` per sample)."""
            served = resolve_version(request, family="weld", model=model, version=version)
            state = _state(served)
            samples = await _parse(request, state.params)
            labels, ids = [], []
            for sample in samples:
                if not sample.label:
                    raise InvalidInput(f"sample {sample.index}: label is required for enrolment",
                                       details={"sample": sample.index, "field": "label"})
                canonical = match_class(sample.label)
                if canonical is None:
                    raise InvalidInput(f"sample {sample.index}: unknown label {sample.label!r}; expected one of "
                                       + ", ".join(CLASSES), details={"sample": sample.index, "field": "label"})
                if not sample.id:
                    raise InvalidInput(f"sample {sample.index}: id is required for enrolment",
                                       details={"sample": sample.index, "field": "id"})
                labels.append(CLASSES.index(canonical))
                ids.append(sample.id)
            embeddings = await _embed(served, samples, request)
            try:
                snapshot = await run_in_threadpool(state.gallery.enroll, embeddings, labels, ids)
            except DuplicateIds as exc:
                raise Conflict(str(exc), details={"ids": exc.ids}) from None
            return EnrolResponse(model=served.name, version=served.version, enrolled=ids,
                                 gallery_size=snapshot.size)

        @router.get("/gallery")
        async def gallery_info(request: Request, model: str | None = Query(None),
                               version: int | None = Query(None)) -> dict:
            """Size of the served gallery, per class, shipped vs enrolled."""
            served = resolve_version(request, family="weld", model=model, version=version)
            snap = _state(served).gallery.snapshot
            counts = np.bincount(snap.label_list, minlength=len(CLASSES))
            return {"model": served.name, "version": served.version, "size": snap.size, "shipped": snap.shipped,
                    "enrolled": snap.size - snap.shipped,
                    "per_class": {CLASSES[c]: int(n) for c, n in enumerate(counts) if n}}

        return router
