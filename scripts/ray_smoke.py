"""Operator's smoke check of a running Ray Serve deployment (after `make serve-ray REPLICAS=2`): readiness, N
forecasts and which replicas answered them (X-Replica), an oversized body (declared, and chunked) answered 413
before it is read, and with the admin token an enrolment through one weld replica and the replicas whose
classify sees it as the nearest neighbour, and 409 on the duplicate id.

    SERVICE_ADMIN_TOKEN=t make serve-ray REPLICAS=2
    python scripts/ray_smoke.py --url http://127.0.0.1:8000 --token t
"""

from __future__ import annotations

import argparse
import socket
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np

from families.repository_layout import latest_manifest
from families.weld.preprocessing import MODALITIES, PreprocessParams

DEFAULT_LIMIT = 64 * 1024 * 1024  # SERVICE_MAX_REQUEST_BYTES's default


def _manifest(repository: Path, model: str) -> dict:
    manifest = latest_manifest(repository / model)
    if manifest is None:
        raise SystemExit(f"no version of {model!r} in {repository}")
    return manifest


def forecast_body(repository: Path) -> dict:
    ids = list(_manifest(repository, "traffic")["preprocessing"]["sensor_ids"])
    values = np.random.default_rng(0).uniform(20, 70, size=(len(ids), 12)).round(1).tolist()
    stamps = np.datetime64("2012-03-05T08:55:00") + np.arange(-11, 1) * np.timedelta64(5, "m")
    return {"windows": [{"sensor_ids": ids, "values": values, "timestamps": [str(s) for s in stamps]}]}


def weld_sample(repository: Path, fill: float) -> dict:
    shapes = PreprocessParams.from_dict(_manifest(repository, "weld")["preprocessing"]["params"]).shapes()
    return {m: np.full(shapes[m], fill, np.float32).tolist() for m in MODALITIES}


def _status_line(sock: socket.socket) -> tuple[int, bytes]:
    """The status of the answer on `sock` and everything read (headers and body up to the close)."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]), data


def oversized(url: str, limit: int, path: str = "/traffic/forecast", timeout: float = 60) -> dict[str, int]:
    """Statuses for bodies over `limit`, each answered before the body is complete (a server that waited for it
    would never answer): `declared`, a Content-Length of limit + 1 with no body sent at all; `chunked`, limit +
    1 bytes in chunks with the terminating chunk never sent. The connection must also close after the answer."""
    parts = urlsplit(url)
    host, port, target = parts.hostname or "127.0.0.1", parts.port or 80, parts.path.rstrip("/") + path
    statuses = {}
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"POST {target} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                     f"content-length: {limit + 1}\r\n\r\n".encode())
        statuses["declared"], _ = _status_line(sock)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"POST {target} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
                     "transfer-encoding: chunked\r\n\r\n".encode())
        block = b" " * 65536
        sent = 0
        while sent <= limit:
            sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
            sent += len(block)
        statuses["chunked"], _ = _status_line(sock)
    return statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--token", help="the service's admin token (SERVICE_ADMIN_TOKEN); without it no enrolment")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--max-body", type=int, default=DEFAULT_LIMIT, help="the deployment's body limit")
    args = parser.parse_args(argv)
    auth = {"Authorization": f"Bearer {args.token}"}
    with httpx.Client(base_url=args.url, timeout=60) as client:
        print("ready:", client.get("/v2/health/ready").status_code)
        body, statuses, replicas = forecast_body(args.repository), Counter(), Counter()
        for _ in range(args.requests):
            r = client.post("/traffic/forecast", json=body)
            statuses[r.status_code] += 1
            replicas[r.headers.get("x-replica")] += 1
        print(f"{args.requests} forecasts: statuses {dict(statuses)}, replicas {dict(replicas)}")
        too_large = oversized(args.url, args.max_body)
        print(f"bodies over {args.max_body} bytes: {too_large}")
        ok = (statuses == Counter({200: args.requests}) and len(replicas) >= 2
              and too_large == {"declared": 413, "chunked": 413})
        if not args.token:
            print("OK" if ok else "FAILED")
            return 0 if ok else 1
        sample, sample_id = weld_sample(args.repository, 0.41), f"smoke-{uuid.uuid4().hex[:8]}"
        enrolment = {"samples": [{**sample, "id": sample_id, "label": "Spatter"}]}
        e = client.post("/weld/gallery", json=enrolment, headers=auth)
        print("enrol:", e.status_code, "by", e.headers.get("x-replica"))
        seen: dict[str, set[str]] = {}
        for _ in range(80):
            r = client.post("/weld/classify", json={"samples": [{**sample, "id": "q"}]})
            top = r.json()["results"][0]["neighbours"][0]["id"] if r.status_code == 200 else str(r.status_code)
            seen.setdefault(r.headers.get("x-replica", "?"), set()).add(top)
        print("nearest neighbour per weld replica:", {k: sorted(v) for k, v in seen.items()})
        again = client.post("/weld/gallery", json=enrolment, headers=auth)
        print("duplicate enrolment:", again.status_code)
    ok = (ok and e.status_code == 200 and all(v == {sample_id} for v in seen.values()) and len(seen) >= 2
          and again.status_code == 409)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
