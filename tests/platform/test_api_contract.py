"""The live app's OpenAPI contract, on ONE server that serves every family (issue 11 item 19).

- every `$ref` of /openapi.json resolves; every error status an operation documents is in the service's error
  shape (task routes `TaskError`, /v2 routes `OipError`), FastAPI's `HTTPValidationError` is gone;
- each generated request example (from the served manifests) answers 200 when posted, as "Try it out" does;
- tritonclient's statistics and repository index over every family;
- schemathesis (`st run`, the CLI) over all operations but unload, admin token given: no 5xx, and statuses,
  content types and bodies as documented. The server's own request counter says how many requests it got.

The repository index and statistics on a default start (no admin token) are tested in test_hostile.py
and test_repository.py; not repeated here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness import LiveServer

ADMIN_TOKEN = "contract-admin-token"
ST_SEED = 20261202
ST_MAX_EXAMPLES = 20  # per operation and phase
ST_MAX_TIME_S = 100  # the whole schemathesis run; fuzzing and stateful repeat until it is spent
ST_CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
EXAMPLE_ROUTES = {"/traffic/forecast", "/water/reconstruct", "/weld/classify", "/v2/models/{model}/infer",
                  "/v2/models/{model}/versions/{version}/infer"}
ERROR_SCHEMAS = {"TaskError", "OipError"}


@pytest.fixture(scope="module")
def server(all_families_repository: Path, serve) -> LiveServer:
    return serve(all_families_repository, env={"SERVICE_ADMIN_TOKEN": ADMIN_TOKEN}, timeout=240)


@pytest.fixture(scope="module")
def document(server: LiveServer) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/openapi.json", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def _resolve(document: dict[str, Any], ref: str) -> Any:
    """A local JSON pointer (`#/a/b`, with ~0 / ~1 escapes); KeyError when it dangles."""
    assert ref.startswith("#/"), f"non-local $ref {ref!r}"
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _refs(node: Any, where: str = "#") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield where, node["$ref"]
        for key, value in node.items():
            yield from _refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _refs(value, f"{where}/{i}")


def test_every_ref_resolves(document: dict[str, Any]) -> None:
    refs = list(_refs(document))
    dangling = []
    for where, ref in refs:
        try:
            _resolve(document, ref)
        except (KeyError, IndexError, ValueError):
            dangling.append((where, ref))
    assert refs and not dangling, dangling
    assert not {"HTTPValidationError", "ValidationError"} & set(document["components"]["schemas"])


def test_every_error_status_is_documented_in_the_service_shape(document: dict[str, Any]) -> None:
    operations = list(_operations(document))
    assert len(operations) >= 20
    for path, method, operation in operations:
        want = "OipError" if path.startswith("/v2") else "TaskError"
        statuses = {int(s) for s in operation["responses"]}
        for status, response in operation["responses"].items():
            if status[0] not in "45" or (path, status) == ("/v2/health/ready", "503"):
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{want}"}, (method, path, status)
        if method == "post":  # every body is read and checked by the service; OIP rejects with 400, never 422
            want_statuses = {400, 413, 415} if path.startswith("/v2") else {400, 413, 415, 422}
            assert want_statuses <= statuses, (method, path, statuses)
            assert not path.startswith("/v2") or 422 not in statuses, (method, path, statuses)
        if "model" in {p["name"] for p in operation.get("parameters", [])}:
            assert {404, 503} <= statuses, (method, path, statuses)
    admin = document["paths"]["/v2/repository/models/{model}/load"]["post"]["responses"]
    assert {"401", "403", "404"} <= set(admin)
    assert set(document["components"]["schemas"]) >= ERROR_SCHEMAS


def _examples(document: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(route path, URL path with the documented parameter examples, request body) for each served example."""
    for path, method, operation in _operations(document):
        example = operation.get("requestBody", {}).get("content", {}).get("application/json", {}) \
            .get("examples", {}).get("served")
        if method != "post" or example is None:
            continue
        url = path
        for param in operation.get("parameters", []):
            if param["in"] == "path":
                url = url.replace("{" + param["name"] + "}", param["example"])
        yield path, url, example["value"]


def test_each_generated_example_answers_200(server: LiveServer, document: dict[str, Any]) -> None:
    examples = list(_examples(document))
    assert {path for path, _, _ in examples} == EXAMPLE_ROUTES
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for path, url, body in examples:
            response = client.post(url, json=body)
            assert response.status_code == 200, (path, response.text[:500])
        sensors = client.get("/traffic/sensors").json()
    forecast = next(body for path, _, body in examples if path == "/traffic/forecast")
    assert forecast["windows"][0]["sensor_ids"] == sensors["sensor_ids"]  # the real ids, not a fixed list
    assert len(forecast["windows"][0]["timestamps"]) == sensors["input_steps"]


def test_statistics_and_index_of_every_family_with_tritonclient(server: LiveServer) -> None:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    served = {("traffic", "1"), ("weld", "1"), ("water", "1"), ("imagecodec", "1"), ("tiny", "1")}
    index = {(row["name"], row["version"], row["state"]) for row in client.get_model_repository_index()}
    assert {(name, version, "READY") for name, version in served} <= index
    stats = client.get_inference_statistics()["model_stats"]
    assert served <= {(m["name"], m["version"]) for m in stats}
    for entry in stats:
        assert {"success", "fail", "queue", "compute_input", "compute_infer", "compute_output"} \
            <= set(entry["inference_stats"]), entry["name"]


def _requests_by_code(server: LiveServer) -> dict[str, int]:
    """The server's own count of answered requests per status code (its end-to-end latency histogram)."""
    counts: dict[str, int] = {}
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name != "inference_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.labels.get("endpoint") != "/metrics":
                code = sample.labels["code"]
                counts[code] = counts.get(code, 0) + int(sample.value)
    return counts


def test_schemathesis_finds_no_server_error_and_no_contract_violation(server: LiveServer, tmp_path: Path) -> None:
    before = _requests_by_code(server)
    report_dir = tmp_path / "report"
    command = [
        str(Path(sys.executable).with_name("st")), "run", f"{server.url}/openapi.json",
        "--header", f"Authorization: Bearer {ADMIN_TOKEN}",
        "--exclude-path-regex", "/unload$",  # it would take models away from the rest of the run
        "--checks", ST_CHECKS, "--max-examples", str(ST_MAX_EXAMPLES), "--max-time", str(ST_MAX_TIME_S),
        "--seed", str(ST_SEED), "--workers", "1",  # several workers trip a CPython 3.11 ast thread-safety bug
        "--request-timeout", "60", "--generation-database", "none", "--no-color",
        "--report", "json", "--report-dir", str(report_dir),
    ]
    started = time.monotonic()
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=ST_MAX_TIME_S + 120)
    seconds = time.monotonic() - started
    after = _requests_by_code(server)
    sent = {code: n for code in after if (n := after[code] - before.get(code, 0))}
    server_errors = {code: n for code, n in sent.items() if code.startswith("5")}
    report = json.loads(next(report_dir.glob("*.json")).read_text())
    print(f"\nschemathesis: {report['test_cases']['generated']} test cases, {sum(sent.values())} requests answered "
          f"in {seconds:.0f} s, by status {dict(sorted(sent.items()))}, 5xx {server_errors or 0}, "
          f"phases {({k: v['status'] for k, v in report['phases'].items()})}")
    assert result.returncode == 0, result.stdout[-6000:]
    assert not server_errors, result.stdout[-6000:]
    assert report["operations"]["tested"] == report["operations"]["selected"] >= 20
    assert sum(sent.values()) >= 500
