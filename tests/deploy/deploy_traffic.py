"""Traffic for the monitoring tests: exercises every model the server serves (Open Inference Protocol) and
every task endpoint its OpenAPI schema lists, so that new families are covered as they land.

- Each READY model in POST /v2/repository/index: concurrent single-row infers (so that the dynamic batcher
  forms batches larger than one), a multi-row infer, and a malformed one (4xx).
- Each task endpoint in /openapi.json: its own request example when the schema has one (JSON bodies),
  otherwise an empty / invalid request, which must be rejected with a 4xx rather than crash.
"""

from __future__ import annotations

import concurrent.futures
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from families.manifest import Manifest

SKIP_PREFIXES = ("/v2", "/metrics", "/docs", "/redoc", "/openapi")


@dataclass
class TrafficReport:
    statuses: dict[str, Counter] = field(default_factory=dict)  # "METHOD path" -> status counts
    models: list[str] = field(default_factory=list)

    def record(self, key: str, status: int) -> None:
        self.statuses.setdefault(key, Counter())[status] += 1

    def server_errors(self) -> dict[str, Counter]:
        """Responses 500-502 (503 not ready / 504 deadline are legitimate answers)."""
        return {k: c for k, c in self.statuses.items() if any(s >= 500 and s not in (503, 504) for s in c)}


def _sample(shape: list[int], datatype: str, rng: np.random.Generator) -> list[Any]:
    if datatype.startswith("FP"):
        return rng.standard_normal(shape).astype(np.float32).ravel().tolist()
    if datatype == "BOOL":
        return [False] * int(np.prod(shape))
    return [0] * int(np.prod(shape))


def _infer_body(inputs: list[dict], rows: int, rng: np.random.Generator) -> dict:
    tensors = []
    for spec in inputs:
        shape = [rows, *spec["shape"][1:]]
        tensors.append({"name": spec["name"], "datatype": spec["datatype"], "shape": shape,
                        "data": _sample(shape, spec["datatype"], rng)})
    return {"inputs": tensors}


def _model_inputs(client: httpx.Client, name: str, version: str, repository: Path | None) -> list[dict]:
    """Input specs with concrete shapes: the manifest's sample shapes when the repository is at hand,
    else the metadata's shape with dynamic axes set to 1."""
    if repository is not None and (repository / name / version / "manifest.json").is_file():
        manifest = Manifest.read(repository / name / version)
        return [{"name": t.name, "datatype": t.datatype, "shape": t.concrete_sample_shape()}
                for t in manifest.primary.inputs]
    metadata = client.get(f"/v2/models/{name}").raise_for_status().json()
    return [{"name": t["name"], "datatype": t["datatype"], "shape": [d if d > 0 else 1 for d in t["shape"]]}
            for t in metadata["inputs"]]


def serving_models(client: httpx.Client, repository: Path | None) -> dict[str, str]:
    """{model: served version}: from the repository extension (POST /v2/repository/index, admin) when it
    is enabled, else from the repository folder and each model's OIP metadata."""
    index = client.post("/v2/repository/index", json={"ready": True})
    serving: dict[str, str] = {}
    if index.status_code == 200:
        for row in index.json():
            if row.get("state") == "READY":
                serving[row["name"]] = max(serving.get(row["name"], row["version"]), row["version"], key=int)
        return serving
    assert index.status_code == 404 and repository is not None, f"repository index: {index.status_code}"
    for folder in sorted(p for p in repository.iterdir() if p.is_dir()):
        metadata = client.get(f"/v2/models/{folder.name}")
        if metadata.status_code == 200:
            serving[folder.name] = max(metadata.json()["versions"], key=int)
    return serving


def drive_models(client: httpx.Client, report: TrafficReport, repository: Path | None, rounds: int = 3,
                 concurrency: int = 8) -> None:
    rng = np.random.default_rng(0)
    serving = serving_models(client, repository)
    report.models = sorted(serving)
    for name, version in sorted(serving.items()):
        inputs = _model_inputs(client, name, version, repository)
        url, key = f"/v2/models/{name}/infer", f"POST /v2/models/{name}/infer"
        one_row = _infer_body(inputs, 1, rng)
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            for _ in range(rounds):
                for response in pool.map(lambda body, url=url: client.post(url, json=body), [one_row] * concurrency):
                    report.record(key, response.status_code)
        report.record(key, client.post(url, json=_infer_body(inputs, 3, rng)).status_code)
        malformed = {"inputs": [{**t, "shape": [*t["shape"], 7]} for t in one_row["inputs"]]}
        report.record(key, client.post(url, json=malformed).status_code)
        report.record(f"GET /v2/models/{name}", client.get(f"/v2/models/{name}").status_code)


def _json_example(operation: dict, components: dict) -> Any:
    content = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if content is None:
        return None
    if "example" in content:
        return content["example"]
    if content.get("examples"):
        return next(iter(content["examples"].values())).get("value")
    schema = content.get("schema", {})
    if "$ref" in schema:
        schema = components.get(schema["$ref"].rsplit("/", 1)[-1], {})
    if "example" in schema:
        return schema["example"]
    if schema.get("examples"):
        return schema["examples"][0]
    return None


def drive_task_endpoints(client: httpx.Client, report: TrafficReport) -> None:
    schema = client.get("/openapi.json").raise_for_status().json()
    components = schema.get("components", {}).get("schemas", {})
    for path, operations in sorted(schema["paths"].items()):
        if path.startswith(SKIP_PREFIXES) or "{" in path:
            continue
        for method, operation in operations.items():
            key = f"{method.upper()} {path}"
            if method == "get":
                report.record(key, client.get(path).status_code)
            elif method == "post":
                content = operation.get("requestBody", {}).get("content", {})
                example = _json_example(operation, components)
                if example is not None:
                    report.record(key, client.post(path, json=example).status_code)
                if "application/json" in content:
                    report.record(key, client.post(path, json={}).status_code)  # missing fields -> 422
                elif "multipart/form-data" in content:
                    report.record(key, client.post(path, files={"unexpected": ("x.bin", b"\0")}).status_code)
                else:
                    report.record(key, client.post(path, content=b"not a valid payload",
                                                   headers={"content-type": "application/octet-stream"}
                                                   ).status_code)


def drive(base_url: str, repository: Path | None = None, admin_token: str | None = None) -> TrafficReport:
    report = TrafficReport()
    headers = {"authorization": f"Bearer {admin_token}"} if admin_token else {}
    with httpx.Client(base_url=base_url, timeout=60, headers=headers) as client:
        drive_models(client, report, repository)
        drive_task_endpoints(client, report)
    return report
