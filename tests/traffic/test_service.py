"""Export + POST /traffic/forecast, through the app in this process (tests/conftest.py `asgi_service`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from families.manifest import Manifest
from families.traffic.preprocessing import Scaler, build_features
from tests.fixtures.asgi import InProcessService
from training.traffic.train import load_checkpoint

if TYPE_CHECKING:
    from training.checkpoints import TrainResult

STEP = np.timedelta64(300, "s")


def _manifest(repository: Path) -> Manifest:
    return Manifest.read(repository / "traffic" / "1")


def _window(manifest: Manifest, seed: int, last: str = "2012-03-05T08:55:00") -> dict[str, Any]:
    """A request window with shuffled sensor order, a few missing readings (0 and null)."""
    rng = np.random.default_rng(seed)
    ids = list(manifest.preprocessing["sensor_ids"])
    order = rng.permutation(len(ids))
    values = rng.uniform(20, 70, size=(len(ids), 12)).round(1).tolist()
    values[0][3] = None
    values[1][11] = 0
    stamps = np.datetime64(last) + np.arange(-11, 1) * STEP
    return {"sensor_ids": [ids[i] for i in order], "values": [values[i] for i in order],
            "timestamps": [str(s) for s in stamps.astype("datetime64[s]")]}


def _expected(manifest: Manifest, version_dir: Path, window: dict[str, Any]) -> np.ndarray:
    """The exported graph run directly with onnxruntime on features built from the manifest -> (N_req, 12)."""
    pre = manifest.preprocessing
    index = {s: i for i, s in enumerate(pre["sensor_ids"])}
    speeds = np.zeros((12, len(index)))
    for sensor, row in zip(window["sensor_ids"], window["values"], strict=True):
        speeds[:, index[sensor]] = [0.0 if v is None else v for v in row]
    stamps = np.array(window["timestamps"], dtype="datetime64[ns]")
    x = build_features(speeds[None], stamps[None], Scaler(**pre["scaler"]), "time_of_day" in pre["features"],
                       "day_of_week" in pre["features"])
    session = ort.InferenceSession(str(version_dir / manifest.primary.file), providers=["CPUExecutionProvider"])
    y = session.run(["y"], {"x": x})[0][0, :, :, 0]  # (12, N)
    return y[:, [index[s] for s in window["sensor_ids"]]].T


def test_manifest_carries_what_serving_needs(traffic_repository: Path, traffic_run: TrainResult) -> None:
    manifest = _manifest(traffic_repository)
    checkpoint = torch.load(traffic_run.best_checkpoint, weights_only=False)
    pre = manifest.preprocessing
    assert manifest.family == "traffic"
    assert pre["sensor_ids"] == checkpoint["sensor_ids"] and len(pre["sensor_ids"]) == 12
    assert pre["scaler"] == checkpoint["scaler"]
    assert pre["step_seconds"] == 300 and pre["horizon"] == 12 and pre["input_steps"] == 12
    assert pre["features"] == ["speed", "time_of_day"]
    graph = manifest.primary
    assert graph.inputs[0].shape == [-1, 12, 12, 2] and graph.outputs[0].shape == [-1, 12, 12, 1]
    assert graph.parity is not None and graph.parity.passed and graph.parity.batch_sizes == [1, 3]
    # the ONNX file itself: symbolic batch axis, fixed sensors
    model = onnx.load(str(traffic_repository / "traffic" / "1" / graph.file))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value
    assert [d.dim_value for d in dims[1:]] == [12, 12, 2]
    assert manifest.provenance["metrics"]["test"]["model"]["average"]["mae"] > 0


@pytest.fixture(scope="module")
def service(asgi_service, traffic_repository: Path) -> InProcessService:
    return asgi_service(traffic_repository)


def test_forecast_equals_the_exported_model(service: InProcessService, traffic_repository: Path,
                                            traffic_run: TrainResult) -> None:
    manifest = _manifest(traffic_repository)
    version_dir = traffic_repository / "traffic" / "1"
    first = _window(manifest, 0)
    second = _window(manifest, 1, last="2012-03-10T17:30:00")
    second_by_last = {k: v for k, v in second.items() if k != "timestamps"}
    second_by_last["last_timestamp"] = second["timestamps"][-1]
    response = service.post("/traffic/forecast", json={"windows": [first | {"id": "a"}, second_by_last]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "traffic" and body["version"] == 1 and body["unit"] == "mph"
    assert [f["id"] for f in body["forecasts"]] == ["a", None]
    for window, forecast in zip([first, second], body["forecasts"], strict=True):
        assert forecast["sensor_ids"] == window["sensor_ids"]
        want = _expected(manifest, version_dir, window)
        np.testing.assert_allclose(np.array(forecast["values"]), want, rtol=1e-5, atol=1e-4)
        last = np.datetime64(window["timestamps"][-1])
        assert [np.datetime64(t[:19]) for t in forecast["timestamps"]] == list(last + np.arange(1, 13) * STEP)
    # a UTC offset is kept (wall-clock time of day, not converted): same forecast, timestamps with the offset
    aware = {k: v for k, v in first.items() if k != "timestamps"}
    aware["last_timestamp"] = first["timestamps"][-1] + "-08:00"
    r = service.post("/traffic/forecast", json={"windows": [aware]})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["forecasts"][0]["values"], body["forecasts"][0]["values"], rtol=1e-6)
    assert r.json()["forecasts"][0]["timestamps"][0].endswith("-08:00")
    sensors = service.get("/traffic/sensors").json()
    assert sensors["sensor_ids"] == manifest.preprocessing["sensor_ids"] and sensors["horizon"] == 12

    # ... and the eager (checkpoint) model agrees with the exported one
    model = load_checkpoint(traffic_run.best_checkpoint).model
    pre = manifest.preprocessing
    index = {s: i for i, s in enumerate(pre["sensor_ids"])}
    speeds = np.zeros((12, 12))
    for sensor, row in zip(first["sensor_ids"], first["values"], strict=True):
        speeds[:, index[sensor]] = [0.0 if v is None else v for v in row]
    x = build_features(speeds[None], np.array(first["timestamps"], dtype="datetime64[ns]")[None],
                       Scaler(**pre["scaler"]), True, False)
    with torch.no_grad():
        eager = model(torch.from_numpy(x)).numpy()[0, :, :, 0][:, [index[s] for s in first["sensor_ids"]]].T
    np.testing.assert_allclose(np.array(body["forecasts"][0]["values"]), eager, atol=2e-3)

    # the same model through the Open Inference Protocol
    x = build_features(speeds[None], np.array(first["timestamps"], dtype="datetime64[ns]")[None],
                       Scaler(**pre["scaler"]), True, False)
    oip = service.post("/v2/models/traffic/infer", json={"inputs": [
        {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]})
    assert oip.status_code == 200, oip.text
    y = np.array(oip.json()["outputs"][0]["data"], dtype=np.float32).reshape(1, 12, 12, 1)
    np.testing.assert_allclose(y[0, :, :, 0][:, [index[s] for s in first["sensor_ids"]]].T, eager, atol=2e-3)

    # every bad input -> 422 whose message names the problem, never a 500
    def bad(window: dict[str, Any], expected: str, raw: str | None = None) -> None:
        content = raw if raw is not None else json.dumps({"windows": [window]})
        r = service.post("/traffic/forecast", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 422, (expected, r.status_code, r.text)
        assert expected in r.json()["error"]["message"], (expected, r.json())

    short = dict(first, values=[row[:11] for row in first["values"]])
    bad(short, "has 11 readings, expected 12")
    bad(dict(first, sensor_ids=first["sensor_ids"][:-1], values=first["values"][:-1]), "the model needs all 12")
    bad(dict(first, sensor_ids=["nope", *first["sensor_ids"][1:]]), "unknown sensor id(s) ['nope']")
    bad(dict(first, sensor_ids=[first["sensor_ids"][1], *first["sensor_ids"][1:]]), "duplicate sensor id")
    bad(dict(first, values=first["values"][:-1]), "has 11 rows but sensor_ids has 12")
    swapped = list(first["timestamps"])
    swapped[4], swapped[5] = swapped[5], swapped[4]
    bad(dict(first, timestamps=swapped), "not strictly increasing")
    bad(dict(first, timestamps=first["timestamps"][:11]), "timestamps: has 11 entries")
    gapped = [str(np.datetime64(first["timestamps"][0]) + k * 2 * STEP) for k in range(12)]
    bad(dict(first, timestamps=gapped), "600 s apart")
    bad(dict(first, last_timestamp=first["timestamps"][-1]), "exactly one of `timestamps`")
    nan_values = [list(row) for row in first["values"]]
    nan_values[2][7] = float("nan")  # json.dumps writes the literal NaN: not JSON, a 400 like every body's
    nan_literal = service.post("/traffic/forecast", content=json.dumps({"windows": [dict(first, values=nan_values)]}),
                               headers={"content-type": "application/json"})
    assert nan_literal.status_code == 400 and "NaN and Infinity are not JSON" in nan_literal.text, nan_literal.text
    nan_values[2][7] = "NaN"
    bad(dict(first), "non-finite reading", raw=json.dumps({"windows": [dict(first, values=nan_values)]}))
    negative = [list(row) for row in first["values"]]
    negative[0][0] = -5
    bad(dict(first, values=negative), "outside [0, 250] mph")


def test_request_timeout_covers_preprocessing(service: InProcessService, traffic_repository: Path) -> None:
    """X-Request-Timeout-Ms counts from arrival: a deadline already spent is never computed (504)."""
    r = service.post("/traffic/forecast", json={"windows": [_window(_manifest(traffic_repository), 0)]},
                     headers={"x-request-timeout-ms": "0.001"})
    assert r.status_code == 504, r.text
    assert "deadline" in r.json()["error"]["message"]


@pytest.mark.parametrize("windows", [0, 65])
def test_window_count_limits(windows: int) -> None:
    from pydantic import ValidationError

    from service.families.traffic.schemas import ForecastRequest

    window = {"sensor_ids": ["a"], "values": [[1.0] * 12], "last_timestamp": "2012-03-05T08:55:00"}
    with pytest.raises(ValidationError):
        ForecastRequest.model_validate({"windows": [window] * windows})
