"""`POST /weld/classify` and `POST /weld/gallery` (admin): k-NN weld defect classification.

A request holds one or more samples, either as uploads of the real file formats (multipart/form-data) or
as ready tensors (JSON). A modality the version declares optional (manifest `optional_modalities`, graph input
`mask_input`) may be left out: it is sent to the model as zeros with presence 0, and the model drops it; any
other missing modality is a 422 naming it. Uploads are decoded and preprocessed by
`preprocessing.preprocess_sample`, the same function training uses. Embeddings come from the exported model
through the dynamic batcher; the k-NN search is exact (one matrix product + top-k) on the serving device, or
a FAISS index above `SERVICE_WELD_FAISS_MIN` references.

Multipart fields, per sample i (the suffix `.i` may be omitted for a single sample):
    video[.i]    one .avi            photos[.i]   exactly the model's number of photos (.jpg), one part
    audio[.i]    one .flac                        each, ordered by file name
    sensors[.i]  one sensor .csv     id[.i]       optional sample id (required to enrol; <= 256 characters,
    label[.i]    class name (enrolment only)      no control characters)

Hostile input is bounded before it costs anything: the work pool admits the request (429) before its body
is read; multipart limits (files, fields, text part size) hold while starlette parses it; each upload's
header is checked against the model's `MediaLimits` (413) before it is decoded; JSON tensors are checked
against the manifest shapes on the raw bytes before they are parsed (`jsontensors`). Decoding and the k-NN
search run on the work pool, under the request's deadline (504) and disconnect signal.
"""


from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from families.weld.classes import CLASSES, match_class
from families.weld.contract import EMBEDDING_OUTPUT, Preprocessing
from families.weld.gallery import DuplicateIds, GalleryStore, GalleryUnavailable
from families.weld.knn import METRICS
from families.weld.preprocessing import (
    MODALITIES,
    MediaTooLarge,
    ModalityError,
    PreprocessParams,
    SampleFiles,
    preprocess_sample,
)
from service.dataplane.bodies import validate_json
from service.dataplane.context import RequestContext
from service.errors import (
    BadRequest,
    ClientDisconnected,
    Conflict,
    DeadlineExceeded,
    InvalidInput,
    NotReady,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
)
from service.families.weld.jsontensors import sample_error as _fail
from service.families.weld.jsontensors import split_tensor_body
from service.families.weld.quality import WeldQuality, search_and_record
from service.families.weld.schemas import (
    MAX_K,
    MAX_SAMPLES,
    MAX_TEXT_CHARS,
    MAX_TEXT_PART_BYTES,
    MULTIPART_BODY_DOC,
    ClassifyResponse,
    EnrolResponse,
    GalleryResponse,
    Neighbour,
    SampleResult,
    TensorRequest,
)
from service.http.auth import require_admin
from service.http.call import Call, task_call
from service.http.openapi import json_body_openapi

_FORBIDDEN_CATEGORIES = {"Cc", "Cs", "Zl", "Zp"}  # control characters, lone surrogates, line separators
_FIELD = re.compile(r"^(video|photos|audio|sensors|id|label)(?:\.(\d{1,3}))?$")


@dataclass(frozen=True)
class WeldState:
    """What the plug-in prepares per loaded version (family.py): its manifest section, the gallery (shipped +
    enrolled references) and the version's OOD recorder."""

    preprocessing: Preprocessing
    gallery: GalleryStore
    quality: WeldQuality

    @property
    def params(self) -> PreprocessParams:
        return self.preprocessing.params

    @property
    def k(self) -> int:
        return self.preprocessing.knn.k

    @property
    def metric(self) -> str:
        return self.preprocessing.knn.metric

    @property
    def optional(self) -> list[str]:
        return self.preprocessing.optional_modalities


WeldCall = Annotated[Call[WeldState], Depends(task_call("weld"))]
router = APIRouter(prefix="/weld", tags=["weld"])


# ---- parsing -----------------------------------------------------------------------------------------

@dataclass
class ParsedSample:
    index: int
    tensors: dict[str, np.ndarray]
    id: str | None
    label: str | None
    missing: tuple[str, ...] = ()  # optional modalities the sample lacks (zeros in `tensors`)


def _too_large(index: int, exc: MediaTooLarge) -> PayloadTooLarge:
    return PayloadTooLarge(f"sample {index}: {exc.modality}: {exc.message}",
                           details={"sample": index, "field": exc.modality, "limit": exc.limit})


def _check_text(index: int, field: str, value: str | None) -> str | None:
    """An id or label: at most MAX_TEXT_CHARS characters and no control characters (422 naming both)."""
    if value is None:
        return None
    details = {"sample": index, "field": field}
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidInput(f"sample {index}: {field} has {len(value)} characters; at most {MAX_TEXT_CHARS}",
                           details={**details, "limit": MAX_TEXT_CHARS})
    bad = next((c for c in value if unicodedata.category(c) in _FORBIDDEN_CATEGORIES), None)
    if bad is not None:
        raise InvalidInput(f"sample {index}: {field} contains the control character U+{ord(bad):04X}",
                           details=details)
    return value


def _form_error(exc: Exception) -> ServiceError:
    """starlette reports multipart limits and syntax errors alike as an HTTPException(400)."""
    message = str(getattr(exc, "detail", "") or exc)
    if "Too many" in message or "exceeded maximum size" in message:
        return PayloadTooLarge(f"multipart body over a limit: {message}")
    return BadRequest(f"malformed multipart body ({message})")


async def _read_multipart(request: Request, params: PreprocessParams) -> list[tuple[int, SampleFiles, dict]]:
    try:
        form = await request.form(max_files=MAX_SAMPLES * (params.num_photos + 3), max_fields=2 * MAX_SAMPLES,
                                  max_part_size=MAX_TEXT_PART_BYTES)
    except ServiceError:  # the body limit (413), raised by the middleware while the form streams in
        raise
    except Exception as exc:  # noqa: BLE001 - malformed multipart bodies raise several types
        raise _form_error(exc) from None
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
            meta.setdefault(index, {})[name] = _check_text(index, name, str(value))
            continue
        if not isinstance(value, UploadFile):
            raise _fail(index, name, f"form field {key!r} must be a file upload")
        if name == "photos":
            if len(sample.photos) >= params.num_photos:  # 422 before holding it in memory
                raise _fail(index, "photos", f"more than the {params.num_photos} photos the model takes")
            sample.photos.append((value.filename or "", await value.read()))  # type: ignore[arg-type]
        elif getattr(sample, name) is not None:
            raise _fail(index, name, f"more than one {name} file")
        else:
            setattr(sample, name, await value.read())
    if not files:
        raise InvalidInput("no sample in the form; send video, photos, audio and sensors files")
    if len(files) > MAX_SAMPLES:
        raise InvalidInput(f"at most {MAX_SAMPLES} samples per request, got {len(files)}")
    out = []
    for index in sorted(files):
        sample = files[index]
        if sample.photos and len(sample.photos) != params.num_photos:
            raise _fail(index, "photos", f"expected {params.num_photos} photos, got {len(sample.photos)}")
        # Training reads images/*.jpg sorted by file name: uploads are ordered the same way.
        sample.photos = [data for _, data in sorted(sample.photos, key=lambda item: item[0])]  # type: ignore[misc]
        out.append((index, sample, meta.get(index, {})))
    return out


def _checkpoint(ctx: RequestContext | None, what: str) -> Callable[[], None]:
    """A check run between decoding steps on the worker thread: a request whose deadline passed (504) or
    whose client left stops there instead of decoding the rest."""

    def check() -> None:
        if ctx is None:
            return
        if ctx.disconnected.is_set():
            raise ClientDisconnected(f"client disconnected during {what}")
        if ctx.deadline is not None and time.monotonic() > ctx.deadline:
            raise DeadlineExceeded(f"request deadline passed during {what}")

    return check


def _decode_uploads(items: list[tuple[int, SampleFiles, dict]], params: PreprocessParams,
                    ctx: RequestContext | None = None, optional: Sequence[str] = ()) -> list[ParsedSample]:
    checkpoint = _checkpoint(ctx, "decoding the uploads")
    parsed = []
    for index, files, meta in items:
        try:
            tensors = preprocess_sample(files, params, checkpoint=checkpoint, optional=optional)
        except MediaTooLarge as exc:
            raise _too_large(index, exc) from None
        except ModalityError as exc:
            raise _fail(index, exc.modality, exc.message) from None
        parsed.append(ParsedSample(index, tensors, meta.get("id"), meta.get("label"), tuple(files.missing())))
    return parsed


def _check_json(raw: bytes, params: PreprocessParams, ctx: RequestContext | None = None,
                optional: Sequence[str] = ()) -> list[ParsedSample]:
    """Tensor shapes on the raw bytes, then the small rest by pydantic, then the numbers by numpy."""
    shapes = params.shapes()
    body = split_tensor_body(raw, shapes)
    request = validate_json(TensorRequest, body.skeleton)
    checkpoint = _checkpoint(ctx, "parsing the tensors")
    for index, sample in enumerate(request.samples):
        _check_text(index, "id", sample.id)
        _check_text(index, "label", sample.label)
    parsed = []
    for index, sample in enumerate(request.samples):
        tensors, missing = {}, []
        for modality in MODALITIES:
            checkpoint()
            value = getattr(sample, modality)
            if value is None and modality in optional:
                tensors[modality] = np.zeros(shapes[modality], np.float32)
                missing.append(modality)
                continue
            try:
                tensors[modality] = body.tensor(value, modality, shapes[modality])
            except ModalityError as exc:
                raise _fail(index, exc.modality, exc.message) from None
        parsed.append(ParsedSample(index, tensors, sample.id, sample.label, tuple(missing)))
    return parsed


async def _parse(call: Call[WeldState]) -> list[ParsedSample]:
    request = call.request
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("multipart/form-data", "application/json"):
        raise UnsupportedMediaType(f"content type {content_type or '(none)'!r}: send multipart/form-data "
                                   "uploads or application/json tensors")
    params, optional = call.state.params, call.state.optional
    pool = call.pool
    with pool.reserve("a weld request"):  # 429 before the body is read; holds a place while it is
        if content_type == "multipart/form-data":
            body: list | bytes = await _read_multipart(request, params)
        else:
            body = await request.body()
            if not body.strip():
                raise BadRequest("empty body: send a JSON object")
    ctx = call.ctx
    if isinstance(body, list):
        return await pool.run(_decode_uploads, body, params, ctx, optional, ctx=ctx, what="decoding weld uploads")
    return await pool.run(_check_json, body, params, ctx, optional, ctx=ctx, what="parsing weld tensors")


def presence_mask(samples: list[ParsedSample]) -> np.ndarray:
    """(B, 4) float32: 1 where a sample has the modality, 0 where it was left out (MODALITIES order)."""
    return np.array([[m not in s.missing for m in MODALITIES] for s in samples], np.float32)


async def _embed(call: Call[WeldState], samples: list[ParsedSample]) -> np.ndarray:
    inputs = {m: np.stack([s.tensors[m] for s in samples]).astype(np.float32) for m in MODALITIES}
    mask_input = call.state.preprocessing.mask_input
    if mask_input is not None:  # versions with optional modalities; older graphs have four inputs
        inputs[mask_input] = presence_mask(samples)
    outputs = await call.infer(inputs)
    return outputs[EMBEDDING_OUTPUT]


def _labelled(samples: list[ParsedSample]) -> tuple[list[int], list[str]]:
    """(class indices, ids) of samples to enrol; 422 naming the sample without a known label or an id."""
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
    return labels, ids


# ---- routes ------------------------------------------------------------------------------------------

# The JSON body is read by `_check_json`, so its schema is documented by hand (with `$defs` inlined).
_BODY_DOC = {"requestBody": {"content": {
    "multipart/form-data": MULTIPART_BODY_DOC,
    "application/json": json_body_openapi(TensorRequest)["requestBody"]["content"]["application/json"]}}}


@router.post("/classify", response_model=ClassifyResponse, response_model_by_alias=True, openapi_extra=_BODY_DOC)
async def classify(call: WeldCall, k: int | None = Query(None, ge=1, le=MAX_K),
                   metric: str | None = Query(None, description="cosine | euclidean | manhattan")):
    """Classify weld samples (uploads of .avi/.jpg/.flac/.csv, or ready tensors) by k-NN."""
    state = call.state
    if metric is not None and metric not in METRICS:
        raise InvalidInput(f"metric must be one of {METRICS}, got {metric!r}", details={"field": "metric"})
    samples = await _parse(call)
    embeddings = await _embed(call, samples)
    gallery = await state.gallery.current()  # one consistent view for the whole request
    use_k, use_metric = min(k or state.k, gallery.size), metric or state.metric
    result = await call.work(search_and_record, gallery, embeddings, use_k, use_metric, len(CLASSES),
                             state.quality, what="weld k-NN")
    results = []
    for row, sample in enumerate(samples):
        votes = {CLASSES[c]: round(float(v), 6) for c, v in enumerate(result.votes[row]) if v > 0}
        neighbours = [Neighbour(id=str(gallery.ids[i]), label=CLASSES[int(gallery.label_list[i])], distance=float(d))
                      for i, d in zip(result.indices[row], result.distances[row], strict=True)]
        results.append(SampleResult(id=sample.id, **{"class": CLASSES[int(result.predictions[row])]},
                                    votes=votes, neighbours=neighbours))
    return ClassifyResponse(**call.envelope(k=use_k, metric=use_metric, gallery_size=gallery.size), results=results)


@router.post("/gallery", response_model=EnrolResponse, dependencies=[Depends(require_admin)], openapi_extra=_BODY_DOC,
             responses={409: {"description": "an id is already enrolled"},
                        503: {"description": "the gallery database did not answer; a retry is safe (409: it had "
                                               "committed)"}})
async def enrol(call: WeldCall):
    """Enrol labelled samples (same inputs as /weld/classify plus `label` and `id` per sample)."""
    samples = await _parse(call)
    labels, ids = _labelled(samples)
    embeddings = await _embed(call, samples)
    try:
        # A write runs to its end once started (no deadline): a 504 must never hide a completed enrolment.
        snapshot = await run_in_threadpool(call.state.gallery.enroll, embeddings, labels, ids)
    except DuplicateIds as exc:  # also when another replica enrolled the id (the database's UNIQUE)
        raise Conflict(str(exc), details={"ids": exc.ids}) from None
    except GalleryUnavailable as exc:  # nothing acknowledged; the ids make a retry safe (409 if it had committed)
        raise NotReady(f"weld gallery database unavailable: {exc}") from None
    return EnrolResponse(**call.envelope(enrolled=ids, gallery_size=snapshot.size))


@router.get("/gallery", response_model=GalleryResponse)
async def gallery_info(call: WeldCall):
    """Size of the served gallery, per class, shipped vs enrolled."""
    snap = await call.state.gallery.current()
    counts = np.bincount(snap.label_list, minlength=len(CLASSES))
    return GalleryResponse(**call.envelope(size=snap.size, shipped=snap.shipped, enrolled=snap.size - snap.shipped,
                                           per_class={CLASSES[c]: int(n) for c, n in enumerate(counts) if n}))
