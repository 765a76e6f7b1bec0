"""Golden responses: fixed requests against a fixed model repository, answered identically by every commit.

`tests/golden/repository/` holds tiny versions of every family exported before the issue-12 restructuring
(so the test also proves that repositories exported by older code keep loading). `golden.json.gz` holds the
requests and the answers that code gave; `python tests/golden/cases.py record` rewrites it (only when a
response is meant to change, and say so in the commit). `test_golden.py` replays the requests.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE / "repository"
GOLDEN = HERE / "golden.json.gz"

_OIP_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_,
               "UINT8": np.uint8, "FP16": np.float16}


def cpu_model() -> str:
    """Floating-point results (and so codec symbols) are bit-identical only on the same CPU and runtime."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _photo(height: int, width: int, seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([128 + 90 * np.sin(x / 9 + c) * np.cos(y / 13 - c) for c in range(3)], axis=-1)
    image = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def _weld_parts(root: Path) -> list[list[str]]:
    """One synthetic weld sample's files as multipart parts [field, filename, content type, base64]."""
    from training.weld.synthetic import generate

    generate(root, train=1, val=1, test=1, seed=3)
    run = sorted(p for p in root.rglob("*.avi"))[0].parent
    parts = [["video", f"{run.name}.avi", "video/x-msvideo", _b64((run / f"{run.name}.avi").read_bytes())],
             ["audio", f"{run.name}.flac", "audio/flac", _b64((run / f"{run.name}.flac").read_bytes())],
             ["sensors", f"{run.name}.csv", "text/csv", _b64((run / f"{run.name}.csv").read_bytes())]]
    parts += [["photos", p.name, "image/jpeg", _b64(p.read_bytes())] for p in sorted((run / "images").glob("*.jpg"))]
    return parts


def _oip_inputs(metadata: dict[str, Any], seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    inputs = []
    for spec in metadata["inputs"]:
        # batch of 2; other free axes (an image's height and width) 16
        shape = [(2 if axis == 0 else 16) if d == -1 else d for axis, d in enumerate(spec["shape"])]
        dtype = _OIP_DTYPES[spec["datatype"]]
        if np.issubdtype(dtype, np.floating):
            data = rng.normal(0, 1, shape).astype(np.float32).round(4).tolist()
        elif dtype == np.bool_:
            data = (rng.random(shape) < 0.5).tolist()
        else:
            data = rng.integers(0, 2, shape).tolist()
        inputs.append({"name": spec["name"], "shape": shape, "datatype": spec["datatype"], "data": data})
    return inputs


def build_requests(url: str) -> list[dict[str, Any]]:
    """The fixed requests (built once, when recording; afterwards they are read back from GOLDEN)."""
    openapi = httpx.get(f"{url}/openapi.json", timeout=60).json()

    def example(path: str) -> Any:
        content = openapi["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        if "example" in content:
            return content["example"]
        return next(iter(content["examples"].values()))["value"]

    requests: list[dict[str, Any]] = [
        {"name": "traffic forecast", "method": "POST", "path": "/traffic/forecast",
         "json": example("/traffic/forecast")},
        {"name": "traffic sensors", "method": "GET", "path": "/traffic/sensors"},
        {"name": "water reconstruct", "method": "POST", "path": "/water/reconstruct",
         "json": example("/water/reconstruct")},
        {"name": "weld gallery", "method": "GET", "path": "/weld/gallery"},
        {"name": "image compress 61x47", "method": "POST", "path": "/image/compress",
         "files": [["image", "a.png", "image/png", _b64(_photo(47, 61, 0))]]},
        {"name": "image compress 96x80", "method": "POST", "path": "/image/compress",
         "files": [["image", "b.png", "image/png", _b64(_photo(80, 96, 1))]]},
    ]
    with tempfile.TemporaryDirectory() as tmp:
        requests.append({"name": "weld classify upload", "method": "POST", "path": "/weld/classify",
                         "files": _weld_parts(Path(tmp))})
    for model in ("tiny", "traffic", "water", "weld", "imagecodec"):
        metadata = httpx.get(f"{url}/v2/models/{model}", timeout=30).json()
        requests.append({"name": f"{model} metadata", "method": "GET", "path": f"/v2/models/{model}"})
        requests.append({"name": f"{model} v2 infer", "method": "POST", "path": f"/v2/models/{model}/infer",
                         "json": {"inputs": _oip_inputs(metadata, seed=len(requests))}})
    return requests


def send(client: httpx.Client, request: dict[str, Any]) -> httpx.Response:
    if request.get("files"):
        files = [(field, (name, base64.b64decode(data), ctype)) for field, name, ctype, data in request["files"]]
        return client.request(request["method"], request["path"], files=files)
    if "content" in request:
        return client.request(request["method"], request["path"], content=base64.b64decode(request["content"]),
                              headers={"content-type": "application/octet-stream"})
    return client.request(request["method"], request["path"], json=request.get("json"))


def answer(response: httpx.Response) -> dict[str, Any]:
    content_type = response.headers.get("content-type", "")
    record: dict[str, Any] = {"status": response.status_code, "content_type": content_type}
    if content_type.startswith("application/json"):
        record["json"] = response.json()
    else:
        record["body"] = _b64(response.content)
    return record


def record(url: str) -> dict[str, Any]:
    cases = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for request in build_requests(url):
            response = send(client, request)
            cases.append({"request": request, "answer": answer(response)})
            if request["path"] == "/image/compress" and response.status_code == 200:
                stream = {"name": request["name"].replace("compress", "decompress"), "method": "POST",
                          "path": "/image/decompress", "content": _b64(response.content)}
                cases.append({"request": stream, "answer": answer(send(client, stream))})
    return {"cpu": cpu_model(), "python": sys.version.split()[0], "cases": cases}


def load() -> dict[str, Any]:
    return json.loads(gzip.decompress(GOLDEN.read_bytes()))


def main() -> None:
    sys.path.insert(0, str(HERE.parents[1]))
    from benchmarks.harness import running_server

    if sys.argv[1:] != ["record"]:
        raise SystemExit("usage: python tests/golden/cases.py record")
    with tempfile.TemporaryDirectory() as tmp, running_server(REPOSITORY, Path(tmp) / "server.log",
                                                              env={"SERVICE_STATE_DIR": f"{tmp}/state"}) as server:
        golden = record(server.url)
    GOLDEN.write_bytes(gzip.compress(json.dumps(golden, sort_keys=True).encode(), mtime=0))
    for case in golden["cases"]:
        print(f"{case['answer']['status']}  {case['request']['name']}")


if __name__ == "__main__":
    main()
