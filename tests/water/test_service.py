"""POST /water/reconstruct and /v2 against the service (in-process) serving the exported fast model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from families.water.preprocessing import MODALITIES
from tests.fixtures.asgi import InProcessService
from training.water.data import generate


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    data = generate(3, 20, 20, seed=77)
    return [{**{m: data.fields[m][i].astype(float).tolist() for m in MODALITIES},
             "static": data.static[i].astype(float).tolist()} for i in range(3)]


@pytest.fixture(scope="module")
def service(asgi_service, water_repository: Path) -> InProcessService:
    return asgi_service(water_repository)


def _with_gaps(sample: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """Null out a block of days in precip, a region in soil, single values in temp and half the series."""
    out = {k: np.array(v, dtype=object) for k, v in sample.items() if k != "static"}
    missing = {m: np.zeros(np.array(sample[m]).shape, bool) for m in MODALITIES}
    missing["precip"][1:3] = True
    missing["soil"][:, 0:10, 5:15] = True
    missing["temp"][4, 3, 7] = True
    missing["temp"][0, 19, 19] = True
    missing["evap"][5:15] = True
    missing["riverflow"][::2] = True
    for m in MODALITIES:
        out[m][missing[m]] = None
    return {**{m: out[m].tolist() for m in MODALITIES}, "static": sample["static"]}, missing


def test_visible_values_unchanged_and_only_missing_filled(service, samples: list[dict]) -> None:
    request, missing = _with_gaps(samples[0])
    response = service.post("/water/reconstruct", json={"samples": [request]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "water" and body["version"] == 1 and body["units"]["precip"] == "mm/day"
    result = body["samples"][0]
    for m in MODALITIES:
        sent = np.array(samples[0][m])
        got = np.array(result[m], dtype=float)
        assert got.shape == sent.shape and np.isfinite(got).all()
        assert np.array_equal(got[~missing[m]], sent[~missing[m]]), m  # bit-identical
        assert np.array_equal(np.array(result["mask"][m]), missing[m])
        assert not np.array_equal(got[missing[m]], sent[missing[m]]) or not missing[m].any()
    # A single missing temperature value hides its whole patch from the model, and only that value changes.
    hidden_temp = np.array(result["hidden"]["temp"])
    assert hidden_temp.shape == (5, 2, 2) and hidden_temp.sum() == 2 and hidden_temp[4, 0, 0] and hidden_temp[0, 1, 1]
    assert np.array(result["hidden"]["precip"])[1:3].all() and not np.array(result["hidden"]["precip"])[0].any()
    # Filled values are plausible: physical units, near the truth scale.
    precip = np.array(result["precip"])[missing["precip"]]
    assert precip.min() > -5 and precip.max() < 100


def test_nothing_missing_comes_back_as_sent_and_batches(service, samples: list[dict]) -> None:
    gappy, _ = _with_gaps(samples[1])
    response = service.post("/water/reconstruct", json={"samples": [samples[0], gappy, samples[2]]})
    assert response.status_code == 200, response.text
    results = response.json()["samples"]
    assert len(results) == 3
    for i in (0, 2):
        for m in MODALITIES:
            assert results[i][m] == samples[i][m]
            assert not np.array(results[i]["mask"][m]).any()


def test_explicit_mask_and_missing_modality(service, samples: list[dict]) -> None:
    sample = dict(samples[0])
    sample.pop("soil")  # the whole grid is missing
    mask = np.zeros((20,), bool)
    mask[-4:] = True
    sample["masks"] = {"riverflow": mask.tolist()}
    response = service.post("/water/reconstruct", json={"samples": [sample]})
    assert response.status_code == 200, response.text
    result = response.json()["samples"][0]
    assert np.array(result["mask"]["soil"]).all() and np.array(result["hidden"]["soil"]).all()
    assert np.isfinite(np.array(result["soil"], dtype=float)).all()
    flow = np.array(result["riverflow"])
    assert np.array_equal(flow[:-4], np.array(samples[0]["riverflow"])[:-4])
    assert np.array_equal(np.array(result["mask"]["riverflow"]), mask)


def test_everything_missing_is_422(service, samples: list[dict]) -> None:
    empty = {"static": samples[0]["static"], "evap": [None] * 20}
    response = service.post("/water/reconstruct", json={"samples": [samples[0], empty]})
    assert response.status_code == 422
    assert "samples[1]" in response.json()["error"]["message"] and "missing" in response.json()["error"]["message"]


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("precip", [[[0.0] * 20] * 21] * 5, "precip grid size is [5, 21, 20], expected [5, 20, 20]"),
    ("temp", [[[0.0] * 20] * 20] * 4, "temp grid size is [4, 20, 20]"),
    ("evap", [0.0] * 19, "evap series length is [19], expected [20]"),
    ("riverflow", [[0.0]] * 20, "samples.0.riverflow.0"),
    ("soil", [[[0.0] * 20] * 20, [[0.0] * 19] * 20] + [[[0.0] * 20] * 20] * 3, "soil must be a rectangular grid"),
    ("static", [1.0] * 10, "static has 10 values, expected 11"),
])
def test_wrong_shapes_are_422_naming_them(service, samples: list[dict], field: str, value, needle: str) -> None:
    sample = {**samples[0], field: value}
    response = service.post("/water/reconstruct", json={"samples": [sample]})
    assert response.status_code == 422, response.text
    assert needle in response.json()["error"]["message"]


def test_v2_infer_reaches_the_same_graph(service) -> None:
    meta = service.get("/v2/models/water").json()
    names = {t["name"] for t in meta["inputs"]}
    assert {"precip", "static", "precip_mask", "riverflow_mask"} <= names
    inputs = []
    for spec in meta["inputs"]:
        shape = [2 if d < 0 else d for d in spec["shape"]]
        size = int(np.prod(shape))
        data = [False] * size if spec["datatype"] == "BOOL" else [0.0] * size
        if spec["name"] == "soil_mask":
            data = [True] * size
        inputs.append({"name": spec["name"], "shape": shape, "datatype": spec["datatype"], "data": data})
    response = service.post("/v2/models/water/infer", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["soil_out"]["shape"] == [2, 5, 20, 20]
    assert np.array(outputs["precip_out"]["data"]).max() == 0.0  # visible input copied through


def test_request_timeout_covers_preprocessing(service, samples: list[dict]) -> None:
    """X-Request-Timeout-Ms counts from arrival: a deadline already spent is never computed (504)."""
    r = service.post("/water/reconstruct", json={"samples": [samples[0]]}, headers={"x-request-timeout-ms": "0.001"})
    assert r.status_code == 504, r.text
    assert "deadline" in r.json()["error"]["message"]
