"""`POST /water/reconstruct`: fill the missing values of grids and series with the served MAE.

A patch / step with any missing value is hidden from the model; only the missing values are replaced,
everything sent is returned unchanged. The event loop only routes: parsing, checks, the gap-filling prior and
the response body run on the work pool, and a body with more values than a valid request to the served model
can hold is refused (413) before it is parsed (parsed JSON costs ~75 bytes per value: a 64 MB body of zeros
would take ~2.4 GB).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Response
from pydantic_core import to_json

from families.water.contract import Grid, Preprocessing, output_name
from families.water.observed import ObservedSample, graph_inputs
from families.water.preprocessing import IMAGE_MODALITIES, MODALITIES, STATIC_NAMES, UNITS, NormStats
from service.errors import InvalidInput
from service.families.water.quality import SelfCheck, WaterQuality
from service.families.water.schemas import ReconstructRequest, ReconstructResponse, WaterSample
from service.http.call import Call, task_call
from service.http.openapi import json_body_openapi

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class WaterState:
    """What the plug-in prepares per loaded version (family.py): its manifest section, the normalisation as
    numpy, the request value cap and the version's quality recorder."""

    preprocessing: Preprocessing
    stats: NormStats
    max_json_values: int
    quality: WaterQuality

    @property
    def grid(self) -> Grid:
        return self.preprocessing.grid


WaterCall = Annotated[Call[WaterState], Depends(task_call("water"))]
router = APIRouter(prefix="/water", tags=["water"])


def _as_array(raw: Any, modality: str, where: str, grid: Grid, dtype: type) -> np.ndarray:
    want = grid.shape(modality)
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
                           f"[{grid.series_len}] for this model")
    return array


def observe(sample: WaterSample, index: int, grid: Grid) -> ObservedSample:
    """One request sample checked against the served sizes (422 naming the field otherwise)."""
    where = f"samples[{index}]"
    values, missing = {}, {}
    for m in MODALITIES:
        raw = getattr(sample, m)
        if raw is None:  # the whole modality is missing
            values[m] = np.full(grid.shape(m), np.nan)
        else:
            values[m] = _as_array(raw, m, where, grid, float)
            if np.isinf(values[m]).any():
                raise InvalidInput(f"{where}: {m} contains an infinite value")
        missing[m] = np.isnan(values[m])
        explicit = getattr(sample.masks, m) if sample.masks is not None else None
        if explicit is not None:
            missing[m] |= _as_array(explicit, m, f"{where}.masks", grid, bool)
    if not any(bool((~missing[m]).any()) for m in MODALITIES):
        raise InvalidInput(f"{where}: every value of every modality is missing; there is nothing to "
                           "reconstruct from")
    static = np.array(sample.static, dtype=float)
    if static.shape != (grid.n_static,):
        raise InvalidInput(f"{where}: static has {static.size} values, expected {grid.n_static} "
                           f"({', '.join(STATIC_NAMES[: grid.n_static])})")
    if not np.isfinite(static).all():
        raise InvalidInput(f"{where}: static attributes must all be finite numbers")
    return ObservedSample(values, missing, static)


@dataclass
class PreparedRequest:
    """A checked request: its samples, and the graph inputs of those with gaps (and of the self-check's copy)."""

    samples: list[ObservedSample]
    todo: list[int]  # samples with something to fill, in model-batch order
    inputs: Tensors | None
    tokens: Tensors | None
    check: SelfCheck | None = None  # the sampled self-check's copy (docs/quality.md), never returned
    check_inputs: Tensors | None = None


def prepare_request(body: ReconstructRequest, state: WaterState) -> PreparedRequest:
    """Checked samples and the graph inputs of those with gaps (on the work pool); the drift statistics and,
    on a sampled request, the self-check's inputs too."""
    samples = [observe(s, i, state.grid) for i, s in enumerate(body.samples)]
    todo = [i for i, s in enumerate(samples) if s.has_gaps()]
    inputs, tokens = (graph_inputs([samples[i] for i in todo], state.preprocessing, state.stats) if todo
                      else (None, None))
    prepared = PreparedRequest(samples, todo, inputs, tokens)
    state.quality.record_inputs(samples)
    prepared.check = state.quality.plan(samples, state.grid.patch) if state.quality.sampled() else None
    if prepared.check is not None:
        prepared.check_inputs = graph_inputs(prepared.check.samples, state.preprocessing, state.stats)[0]
    return prepared


async def infer_with_selfcheck(call: Call[WaterState],
                               prepared: PreparedRequest) -> tuple[Tensors | None, Tensors | None]:
    """(outputs, self-check outputs): the self-check's copy runs alongside; its failure is not the
    request's (its outputs are then None)."""
    real = call.infer(prepared.inputs) if prepared.inputs is not None else asyncio.sleep(0)
    if prepared.check_inputs is None:
        return await real, None
    outputs, checked = await asyncio.gather(real, call.infer(prepared.check_inputs), return_exceptions=True)
    if isinstance(outputs, BaseException):
        raise outputs
    return outputs, None if isinstance(checked, BaseException) else checked


def _json(value: Any) -> bytes:
    """JSON of one field, serialised on its own: a single `to_json` of a whole response holds the GIL (and so
    stalls the event loop) for ~100 ns per value; one array at a time keeps each hold short."""
    if isinstance(value, dict):
        return b"{" + b",".join(to_json(k) + b":" + _json(v) for k, v in value.items()) + b"}"
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return to_json(value, inf_nan_mode="null")  # NaN/inf as null, like a model's default serialisation


def complete(sample: ObservedSample, outputs: Tensors | None, row: int, state: WaterState,
             tokens: Tensors | None) -> bytes:
    """One `ReconstructedSample` as JSON: sent values unchanged, missing values from the model output."""
    fields, hidden = {}, {}
    for m in MODALITIES:
        values = sample.values[m]
        if outputs is not None and sample.missing[m].any():
            predicted = state.stats.denormalise(m, outputs[output_name(m)][row]).astype(np.float64)
            values = np.where(sample.missing[m], predicted, values)
        fields[m] = values
        hidden[m] = tokens[m][row] if tokens is not None else np.zeros(state.grid.token_shape(m), bool)
    return _json({**fields, "mask": sample.missing, "hidden": hidden})


def render_response(envelope: dict[str, Any], prepared: PreparedRequest, outputs: Tensors | None,
                    checked: Tensors | None, state: WaterState) -> bytes:
    """Score the self-check (if any), then the `ReconstructResponse` JSON body, one sample and field at a
    time (one work-pool job)."""
    if prepared.check is not None and checked is not None:
        state.quality.score(prepared.check, checked, state.stats)
    row_of = {i: r for r, i in enumerate(prepared.todo)}
    samples = [
        complete(s, outputs if i in row_of else None, row_of.get(i, 0), state,
                 prepared.tokens if i in row_of else None)
        for i, s in enumerate(prepared.samples)
    ]
    head = _json({**envelope, "units": UNITS})
    return head[:-1] + b',"samples":[' + b",".join(samples) + b"]}"


@router.post("/reconstruct", response_model=ReconstructResponse, openapi_extra=json_body_openapi(ReconstructRequest))
async def reconstruct(call: WaterCall) -> Response:
    """Fill the missing values of each sample; values that were sent come back unchanged.

    A body with more values than a valid request to the served model can hold (64 samples of its
    grids and series, with masks; at most 4,000,000 values) gets 413 before it is parsed.
    """
    body = await call.json(ReconstructRequest, "water reconstruct request", max_values=call.state.max_json_values)
    prepared = await call.work(prepare_request, body, call.state, what="water preprocessing")
    outputs, checked = await infer_with_selfcheck(call, prepared)
    return await call.respond(render_response, call.envelope(), prepared, outputs, checked, call.state,
                              what="water response")
