"""`POST /water/reconstruct`: fill the missing values of grids and series with the served MAE.

Per sample the client sends the three grids [T][H][W] and two series [T_v] in physical units, missing
values as null (or NaN via an explicit `masks` entry), plus the 11 static attributes. A patch / step with
any missing value is hidden from the model; only the missing values are replaced, everything sent is
returned unchanged. Shapes are checked against the served version's manifest.

The event loop only routes: parsing, checks, the gap-filling prior and the response body run on the work
pool, and a body with more values than a valid request to the served model can hold is refused (413) before
it is parsed (parsed JSON costs ~75 bytes per value: a 64 MB body of zeros would take ~2.4 GB).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

from families.water.preprocessing import (
    IMAGE_MODALITIES,
    MODALITIES,
    STATIC_NAMES,
    UNITS,
    VECTOR_MODALITIES,
    NormStats,
    fill_hidden,
    patch_mask,
)
from service.dataplane import (
    json_body_openapi,
    parse_json_body,
    request_context,
    resolve_version,
    workpool_of,
)
from service.errors import InvalidInput
from service.families.water.quality import STATE_KEY as QUALITY_KEY
from service.families.water.quality import SelfCheck, WaterQuality
from service.plugin import FamilyPlugin as Family  # transitional

if TYPE_CHECKING:
    from service.repository import LoadedVersion

MAX_SAMPLES = 64
MAX_JSON_VALUES = 4_000_000  # absolute cap per request (~300 MB parsed): 2 full-size 290x180 samples with masks
Grid = list[list[list[float | None]]]
Series = list[float | None]


class WaterMasks(BaseModel):
    """Optional explicit masks (true = missing, reconstruct it), same shapes as the fields."""

    model_config = ConfigDict(extra="forbid")
    precip: list[list[list[bool]]] | None = None
    soil: list[list[list[bool]]] | None = None
    temp: list[list[list[bool]]] | None = None
    evap: list[bool] | None = None
    riverflow: list[bool] | None = None


class WaterSample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    precip: Grid | None = Field(None, description="precipitation [T][H][W] in mm/day; null = missing "
                                "(omit the field when the whole grid is missing)")
    soil: Grid | None = Field(None, description="soil moisture [T][H][W] in m3/m3")
    temp: Grid | None = Field(None, description="temperature [T][H][W] in degC")
    evap: Series | None = Field(None, description="evaporation series [T_v] in mm/day")
    riverflow: Series | None = Field(None, description="river flow series [T_v] in mm/day")
    static: list[float] = Field(..., description=f"the {len(STATIC_NAMES)} static attributes: "
                                + ", ".join(STATIC_NAMES))
    masks: WaterMasks | None = None


class ReconstructRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"samples": [{
            "precip": [[[0.0, None], [1.2, 0.4]]], "soil": [[[0.21, 0.2], [None, 0.19]]],
            "temp": [[[12.5, 12.1], [11.8, None]]], "evap": [1.1, None, 0.9], "riverflow": [0.5, 0.6, None],
            "static": [850.0, 640.0, 0.5, 1.1, 0.4, 1.2, 0.35, 2.0, 0.45, 0.85, 47.0]}]}]},
    )
    samples: list[WaterSample] = Field(..., min_length=1, max_length=MAX_SAMPLES)


class ReconstructedSample(BaseModel):
    precip: Grid
    soil: Grid
    temp: Grid
    evap: Series
    riverflow: Series
    mask: dict[str, Any] = Field(description="per modality, true where a value was missing and has been filled")
    hidden: dict[str, Any] = Field(description="per modality, the patches [T][H/p][W/p] / steps [T_v] "
                                   "hidden from the model")


class ReconstructResponse(BaseModel):
    model: str
    version: int
    units: dict[str, str]
    samples: list[ReconstructedSample]


@dataclass
class WaterSpec:
    frames: int
    height: int
    width: int
    patch: int
    series_len: int
    n_static: int
    stats: NormStats
    prior_fill: bool = False  # the graph expects the gap-filling prior at hidden values

    @classmethod
    def from_preprocessing(cls, pre: dict[str, Any]) -> WaterSpec:
        grid = pre["grid"]
        return cls(frames=int(grid["frames"]), height=int(grid["height"]), width=int(grid["width"]),
                   patch=int(grid["patch"]), series_len=int(grid["series_len"]), n_static=int(grid["n_static"]),
                   stats=NormStats.from_dict(pre["stats"]), prior_fill=bool(pre.get("prior_fill", False)))

    def shape(self, modality: str) -> tuple[int, ...]:
        if modality in IMAGE_MODALITIES:
            return (self.frames, self.height, self.width)
        return (self.series_len,)

    def max_json_values(self) -> int:
        """The most JSON values (commas + 1) a valid request can hold: per sample every grid and series
        twice (values and masks; a grid's commas are T*H*(W+1) + T at most), the static attributes, keys."""
        grid = self.frames * self.height * (self.width + 1) + self.frames
        per_sample = 2 * (len(IMAGE_MODALITIES) * grid + len(VECTOR_MODALITIES) * self.series_len) + self.n_static + 16
        return min(MAX_SAMPLES * per_sample + 16, MAX_JSON_VALUES)


@dataclass
class ParsedSample:
    values: dict[str, np.ndarray]  # physical units, float64, NaN where missing
    missing: dict[str, np.ndarray]  # value-level bool
    static: np.ndarray


def _as_array(raw: Any, modality: str, where: str, spec: WaterSpec, dtype: type) -> np.ndarray:
    want = spec.shape(modality)
    what = "grid [T][H][W]" if modality in IMAGE_MODALITIES else "series [T_v]"
    try:
        array = np.array(raw, dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{where}: {modality} must be a rectangular {what} of numbers") from exc
    if array.shape != want:
        if modality in IMAGE_MODALITIES:
            raise InvalidInput(f"{where}: {modality} grid size is {list(array.shape)}, expected "
                               f"{list(want)} (T, H, W) for this model")
        raise InvalidInput(f"{where}: {modality} series length is {list(array.shape)}, expected "
                           f"[{spec.series_len}] for this model")
    return array


def parse_sample(sample: WaterSample, index: int, spec: WaterSpec) -> ParsedSample:
    where = f"samples[{index}]"
    values, missing = {}, {}
    for m in MODALITIES:
        raw = getattr(sample, m)
        if raw is None:  # the whole modality is missing
            values[m] = np.full(spec.shape(m), np.nan)
        else:
            values[m] = _as_array(raw, m, where, spec, float)
            if np.isinf(values[m]).any():
                raise InvalidInput(f"{where}: {m} contains an infinite value")
        missing[m] = np.isnan(values[m])
        explicit = getattr(sample.masks, m) if sample.masks is not None else None
        if explicit is not None:
            missing[m] |= _as_array(explicit, m, f"{where}.masks", spec, bool)
    if not any(bool((~missing[m]).any()) for m in MODALITIES):
        raise InvalidInput(f"{where}: every value of every modality is missing; there is nothing to "
                           "reconstruct from")
    static = np.array(sample.static, dtype=float)
    if static.shape != (spec.n_static,):
        raise InvalidInput(f"{where}: static has {static.size} values, expected {spec.n_static} "
                           f"({', '.join(STATIC_NAMES[: spec.n_static])})")
    if not np.isfinite(static).all():
        raise InvalidInput(f"{where}: static attributes must all be finite numbers")
    return ParsedSample(values, missing, static)


def model_inputs(parsed: list[ParsedSample], spec: WaterSpec) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Normalised fields (hidden values: the gap-filling prior with `prior_fill`, else the mean) + token
    masks for the graph; also returns the token masks."""
    inputs: dict[str, np.ndarray] = {}
    tokens: dict[str, np.ndarray] = {}
    for m in MODALITIES:
        missing = np.stack([p.missing[m] for p in parsed])
        values = np.stack([p.values[m] for p in parsed])
        normed = spec.stats.normalise(m, np.where(missing, spec.stats.mean[m], values))
        tokens[m] = patch_mask(missing, spec.patch) if m in IMAGE_MODALITIES else missing
        if spec.prior_fill:
            normed = fill_hidden(normed, tokens[m], m in IMAGE_MODALITIES, spec.patch)
        inputs[m] = normed.astype(np.float32)
        inputs[f"{m}_mask"] = tokens[m]
    inputs["static"] = spec.stats.normalise_static(np.stack([p.static for p in parsed])).astype(np.float32)
    return inputs, tokens


def _json(value: Any) -> bytes:
    """JSON of one field, serialised on its own: a single `to_json` of a whole response holds the GIL (and so
    stalls the event loop) for ~100 ns per value; one array at a time keeps each hold short."""
    if isinstance(value, dict):
        return b"{" + b",".join(to_json(k) + b":" + _json(v) for k, v in value.items()) + b"}"
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return to_json(value, inf_nan_mode="null")  # NaN/inf as null, like a model's default serialisation


def complete(parsed: ParsedSample, outputs: dict[str, np.ndarray] | None, row: int, spec: WaterSpec,
             tokens: dict[str, np.ndarray] | None) -> bytes:
    """One `ReconstructedSample` as JSON: sent values unchanged, missing values from the model output."""
    fields, hidden = {}, {}
    for m in MODALITIES:
        values = parsed.values[m]
        if outputs is not None and parsed.missing[m].any():
            predicted = spec.stats.denormalise(m, outputs[f"{m}_out"][row]).astype(np.float64)
            values = np.where(parsed.missing[m], predicted, values)
        fields[m] = values
        if tokens is not None:
            hidden[m] = tokens[m][row]
        else:
            hidden[m] = np.zeros((spec.frames, spec.height // spec.patch, spec.width // spec.patch)
                                 if m in IMAGE_MODALITIES else (spec.series_len,), bool)
    return _json({**fields, "mask": parsed.missing, "hidden": hidden})


@dataclass
class Prepared:
    parsed: list[ParsedSample]
    todo: list[int]  # samples with something to fill, in model-batch order
    inputs: dict[str, np.ndarray] | None
    tokens: dict[str, np.ndarray] | None
    check: SelfCheck | None = None  # the sampled self-check's copy (docs/quality.md), never returned
    check_inputs: dict[str, np.ndarray] | None = None


def prepare_request(body: ReconstructRequest, spec: WaterSpec, quality: WaterQuality | None = None) -> Prepared:
    """Checked samples and the graph inputs of those with gaps (runs on the work pool); with `quality`,
    the drift statistics and, on a sampled request, the self-check's inputs too."""
    parsed = [parse_sample(s, i, spec) for i, s in enumerate(body.samples)]
    todo = [i for i, p in enumerate(parsed) if any(p.missing[m].any() for m in MODALITIES)]
    inputs, tokens = model_inputs([parsed[i] for i in todo], spec) if todo else (None, None)
    prepared = Prepared(parsed, todo, inputs, tokens)
    if quality is not None:
        quality.record_inputs(parsed)
        prepared.check = quality.plan(parsed, spec) if quality.sampled() else None
        if prepared.check is not None:
            prepared.check_inputs = model_inputs(prepared.check.samples, spec)[0]
    return prepared


def _quality(request: Request, version: LoadedVersion) -> WaterQuality:
    """The version's quality recorder, made on first use (event loop: no await between check and set)."""
    quality = version.state.get(QUALITY_KEY)
    if quality is None:
        app = request.app.state
        quality = WaterQuality(app.metrics.quality, version.name, str(version.version),
                               version.manifest.preprocessing, app.settings.quality_water_selfcheck_fraction)
        version.state[QUALITY_KEY] = quality
    return quality


async def _infer(loaded: LoadedVersion, prepared: Prepared, ctx: Any) -> tuple[Any, Any]:
    """(outputs, self-check outputs): the self-check's copy runs alongside; its failure is not the
    request's (its outputs are then None)."""
    real = loaded.infer(prepared.inputs, ctx=ctx) if prepared.inputs is not None else asyncio.sleep(0)
    if prepared.check_inputs is None:
        return await real, None
    outputs, checked = await asyncio.gather(real, loaded.infer(prepared.check_inputs, ctx=ctx),
                                            return_exceptions=True)
    if isinstance(outputs, BaseException):
        raise outputs
    return outputs, None if isinstance(checked, BaseException) else checked


def finish(loaded: LoadedVersion, prepared: Prepared, outputs: dict[str, np.ndarray] | None, spec: WaterSpec,
           quality: WaterQuality, checked: dict[str, np.ndarray] | None) -> bytes:
    """Score the self-check (if any), then the response body (one work-pool job)."""
    if prepared.check is not None and checked is not None:
        quality.score(prepared.check, checked, spec)
    return render_response(loaded, prepared, outputs, spec)


def render_response(loaded: LoadedVersion, prepared: Prepared, outputs: dict[str, np.ndarray] | None,
                    spec: WaterSpec) -> bytes:
    """The `ReconstructResponse` JSON body (on the work pool, one sample and field at a time)."""
    row_of = {i: r for r, i in enumerate(prepared.todo)}
    samples = [
        complete(p, outputs if i in row_of else None, row_of.get(i, 0), spec,
                 prepared.tokens if i in row_of else None)
        for i, p in enumerate(prepared.parsed)
    ]
    head = _json({"model": loaded.name, "version": loaded.version, "units": UNITS})
    return head[:-1] + b',"samples":[' + b",".join(samples) + b"]}"


MAX_EXAMPLE_GRID_VALUES = 4096  # larger grids are left out of the example (a missing modality is allowed)


def reconstruct_example(spec: WaterSpec) -> dict[str, Any]:
    """One sample in the served model's sizes: the series (and grids, when small) at the training means
    with a few gaps, and the static attributes at their means."""
    sample: dict[str, Any] = {}
    if spec.frames * spec.height * spec.width <= MAX_EXAMPLE_GRID_VALUES:
        for m in IMAGE_MODALITIES:
            grid = np.full(spec.shape(m), round(spec.stats.mean[m], 3)).tolist()
            grid[0][0][0] = None
            sample[m] = grid
    for m in VECTOR_MODALITIES:
        sample[m] = [None if t % 4 == 3 else round(spec.stats.mean[m], 3) for t in range(spec.series_len)]
    sample["static"] = [round(float(v), 3) for v in spec.stats.static_mean[: spec.n_static]]
    return {"samples": [sample]}


class WaterFamily(Family):
    name = "water"

    def prepare(self, version: LoadedVersion) -> None:
        version.state["spec"] = WaterSpec.from_preprocessing(version.manifest.preprocessing)

    def openapi_examples(self, version: LoadedVersion, state: Any = None) -> dict[str, Any]:
        return {"/water/reconstruct": reconstruct_example(version.state["spec"])}

    def router(self) -> APIRouter:
        router = APIRouter(tags=["water"])

        @router.post("/water/reconstruct", response_model=ReconstructResponse,
                     openapi_extra=json_body_openapi(ReconstructRequest))
        async def reconstruct(request: Request,
                              model: str | None = Query(None, description="model name (default: water)"),
                              version: int | None = Query(None, description="version (default: latest)"),
                              ) -> Response:
            """Fill the missing values of each sample; values that were sent come back unchanged.

            A body with more values than a valid request to the served model can hold (64 samples of its
            grids and series, with masks; at most 4,000,000 values) gets 413 before it is parsed.
            """
            loaded = resolve_version(request, family="water", model=model, version=version)
            spec: WaterSpec = loaded.state["spec"]
            body = await parse_json_body(request, ReconstructRequest, "water reconstruct request",
                                         max_values=spec.max_json_values())
            ctx = request_context(request)
            pool = workpool_of(request)
            quality = _quality(request, loaded)
            prepared = await pool.run(prepare_request, body, spec, quality, ctx=ctx, what="water preprocessing")
            outputs, checked = await _infer(loaded, prepared, ctx)
            content = await pool.run(finish, loaded, prepared, outputs, spec, quality, checked, ctx=ctx,
                                     what="water response")
            return Response(content, media_type="application/json")

        return router
PLUGIN = WaterFamily()
