"""The OpenAPI document states the rules the task routes enforce (issue 26 item 13).

schemathesis reported operations whose generated requests were mostly refused: the document allowed any JSON
(readings of any value, empty rows, duplicate sensor ids, tensors of any nesting, any label) where the routes
refuse most of it. Each documented rule is read from /openapi.json (built from the routes alone, no model
needed) and, for each, a request breaking only that rule is shown to be refused by the code that enforces it,
so the document says no more and no less than what is checked. tests/platform/test_api_contract.py runs
schemathesis over the served document.
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.asgi import InProcessService

TRAFFIC_PATHS = ("/traffic/forecast", "/traffic/observations")


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from service.app import create_app
    from service.settings import Settings

    empty = tmp_path_factory.mktemp("no-models")
    return create_app(Settings(model_repository=empty, state_dir=empty / "state", device="cpu")).openapi()


def _body_schema(document: dict[str, Any], path: str) -> dict[str, Any]:
    return document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


def _window(document: dict[str, Any], path: str) -> dict[str, Any]:
    return _body_schema(document, path)["properties"]["windows"]["items"]


def _nested(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The array levels of a nested-array schema, outermost first (through a nullable `anyOf`)."""
    schema = next((s for s in schema.get("anyOf", []) if s.get("type") == "array"), schema)
    while schema.get("type") == "array":
        yield schema
        schema = next((s for s in schema["items"].get("anyOf", []) if s.get("type") == "array"), schema["items"])


def test_traffic_windows_document_what_the_routes_check(document: dict[str, Any]) -> None:
    from service.families.traffic.schemas import MAX_OBSERVATION_STEPS, MAX_SENSORS, MAX_SPEED

    for path in TRAFFIC_PATHS:
        window = _window(document, path)
        assert window["oneOf"] == [{"required": ["timestamps"]}, {"required": ["last_timestamp"]}], path
        ids = window["properties"]["sensor_ids"]
        assert ids["uniqueItems"] is True and ids["minItems"] == 1 and ids["maxItems"] == MAX_SENSORS, path
        rows = list(_nested(window["properties"]["values"]))
        assert len(rows) == 2 and rows[0]["minItems"] == 1 and rows[1]["minItems"] == 1, path
        reading = rows[1]["items"]["anyOf"]
        assert {"type": "number", "minimum": 0, "maximum": MAX_SPEED} in reading and {"type": "null"} in reading
        assert window["properties"]["timestamps"]["minItems"] == 1, path
    observation = _window(document, "/traffic/observations")
    assert list(_nested(observation["properties"]["values"]))[1]["maxItems"] == MAX_OBSERVATION_STEPS


def test_water_weld_and_oip_bodies_document_what_the_routes_check(document: dict[str, Any]) -> None:
    from families.water.preprocessing import STATIC_NAMES
    from families.weld.classes import CLASSES
    from families.weld.preprocessing import SENSOR_COLUMNS
    from service.families.weld.schemas import MAX_TEXT_CHARS

    sample = _body_schema(document, "/water/reconstruct")["properties"]["samples"]["items"]["properties"]
    assert sample["static"]["minItems"] == 1 and sample["static"]["maxItems"] == len(STATIC_NAMES)
    for modality, rank in (("precip", 3), ("soil", 3), ("temp", 3), ("evap", 1), ("riverflow", 1)):
        levels = list(_nested(sample[modality]))
        assert len(levels) == rank and all(level["minItems"] == 1 for level in levels), modality
        assert len(list(_nested(sample["masks"]["anyOf"][0]["properties"][modality]))) == rank, modality

    for path in ("/weld/classify", "/weld/gallery"):
        tensors = _body_schema(document, path)["properties"]["samples"]["items"]["properties"]
        assert tensors["id"]["maxLength"] == MAX_TEXT_CHARS and "pattern" in tensors["id"], path
        assert set(tensors["label"]["enum"]) == {*CLASSES, None}, path
        ranks = {m: [level.get("maxItems") for level in _nested(tensors[m])] for m in ("video", "photos", "audio",
                                                                                       "sensors")}
        assert ranks == {"video": [None, 3, None, None], "photos": [None, 3, None, None], "audio": [None, None],
                         "sensors": [None, len(SENSOR_COLUMNS)]}, (path, ranks)

    infer = _body_schema(document, "/v2/models/{model}/infer")["properties"]["inputs"]
    assert infer["minItems"] == 1 and "data" in infer["items"]["required"]


# ---- each documented rule is enforced -------------------------------------------------------------------

@pytest.fixture(scope="module")
def traffic(asgi_service, traffic_repository: Path) -> InProcessService:
    return asgi_service(traffic_repository, admin_token="constraints-token")


def _traffic_window(service: InProcessService, **change: Any) -> dict[str, Any]:
    sensors = service.get("/traffic/sensors").json()
    window = {"sensor_ids": sensors["sensor_ids"], "last_timestamp": "2012-03-05T08:55:00",
              "values": [[50.0] * sensors["input_steps"] for _ in sensors["sensor_ids"]]}
    return {**window, **change}


@pytest.mark.parametrize("path", TRAFFIC_PATHS)
@pytest.mark.parametrize("rule", ["reading above maximum", "reading below minimum", "empty row", "duplicate id",
                                  "both time references", "neither time reference", "empty timestamps",
                                  "too many steps"])
def test_each_documented_traffic_rule_is_enforced(traffic: InProcessService, path: str, rule: str) -> None:
    from service.families.traffic.schemas import MAX_OBSERVATION_STEPS, MAX_SPEED

    if rule == "too many steps" and path == "/traffic/forecast":
        pytest.skip("a forecast row has the model's input_steps (GET /traffic/sensors), not a fixed bound")
    ok = _traffic_window(traffic)
    ids, rows = ok["sensor_ids"], ok["values"]
    broken = {
        "reading above maximum": {"values": [[MAX_SPEED + 0.5] + row[1:] for row in rows]},
        "reading below minimum": {"values": [[-0.5] + row[1:] for row in rows]},
        "empty row": {"values": [[] for _ in rows]},
        "duplicate id": {"sensor_ids": [ids[0], *ids[:-1]]},
        "both time references": {"timestamps": ["2012-03-05T08:55:00"] * len(rows[0])},
        "neither time reference": {"last_timestamp": None},
        "empty timestamps": {"last_timestamp": None, "timestamps": []},
        "too many steps": {"values": [[50.0] * (MAX_OBSERVATION_STEPS + 1) for _ in rows]},
    }[rule]
    headers = {"authorization": "Bearer constraints-token"}
    assert traffic.post(path, json={"windows": [ok]}, headers=headers).status_code == 200
    answer = traffic.post(path, json={"windows": [_traffic_window(traffic, **broken)]}, headers=headers)
    assert answer.status_code == 422, (rule, answer.text)


def test_each_documented_water_rule_is_enforced() -> None:
    from families.water.contract import Grid
    from families.water.preprocessing import STATIC_NAMES
    from service.errors import InvalidInput
    from service.families.water.routes import observe
    from service.families.water.schemas import WaterSample

    grid = Grid(height=2, width=2, patch=1, frames=1, series_len=3, n_static=len(STATIC_NAMES))
    good = {"precip": [[[1.0, 2.0], [3.0, None]]], "evap": [1.0, None, 2.0], "static": [0.5] * len(STATIC_NAMES)}
    observe(WaterSample.model_validate(good), 0, grid)
    for broken in ({"precip": [[[]]]}, {"precip": [[]]}, {"evap": []}, {"static": []},
                   {"static": [0.5] * (len(STATIC_NAMES) + 1)}):
        with pytest.raises(InvalidInput):
            observe(WaterSample.model_validate({**good, **broken}), 0, grid)


def test_the_documented_id_pattern_is_the_enforced_one(document: dict[str, Any]) -> None:
    """Every character the id check refuses (Cc, Zl, Zp; Cs cannot be in valid JSON text) is outside the
    documented pattern, and every other one inside it."""
    from service.errors import InvalidInput
    from service.families.weld.routes import _check_text

    pattern = re.compile(_body_schema(document, "/weld/classify")["properties"]["samples"]["items"]["properties"]
                         ["id"]["pattern"])
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if unicodedata.category(char) == "Cs":
            continue
        try:
            _check_text(0, "id", char)
            refused = False
        except InvalidInput:
            refused = True
        assert refused == (pattern.fullmatch(char) is None), f"U+{code:04X}"


def test_documented_weld_tensor_ranks_ids_and_labels_are_enforced() -> None:
    from families.weld.classes import CLASSES
    from families.weld.preprocessing import SENSOR_COLUMNS, PreprocessParams
    from service.errors import InvalidInput
    from service.families.weld.jsontensors import split_tensor_body
    from service.families.weld.routes import ParsedSample, _check_text, _labelled
    from service.families.weld.schemas import MAX_TEXT_CHARS

    shapes = PreprocessParams(video_frames=2, video_size=4, num_photos=1, photo_size=4, audio_frames=3,
                              audio_mel_bins=2, sensor_steps=2).shapes()
    columns = len(SENSOR_COLUMNS)
    split_tensor_body(json.dumps({"samples": [{"sensors": [[0.0] * columns] * 2}]}).encode(), shapes)
    for broken in ({"sensors": [[0.0] * (columns + 1)] * 2},  # a column more than the documented count
                   {"video": [[[0.0] * 4] * 4] * 3},  # rank 3, documented rank 4
                   {"photos": [[[[0.0] * 4] * 4] * 2]},  # 2 channels, documented 3
                   {"audio": [[]]}):  # an empty axis
        with pytest.raises(InvalidInput):
            split_tensor_body(json.dumps({"samples": [broken]}).encode(), shapes)
    _check_text(0, "id", "x" * MAX_TEXT_CHARS)
    with pytest.raises(InvalidInput):
        _check_text(0, "id", "x" * (MAX_TEXT_CHARS + 1))
    for label in CLASSES:
        assert _labelled([ParsedSample(0, {}, "x", label)]) == ([CLASSES.index(label)], ["x"])
    with pytest.raises(InvalidInput):
        _labelled([ParsedSample(0, {}, "x", "Scratch")])
