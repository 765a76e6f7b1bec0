"""`POST /weld/classify` latency with multipart uploads of the real files (.avi, 5 .jpg, .flac, .csv) at
concurrency 1 and 16, on a real service process serving the default (small) weld model on CPU.

    python benchmarks/weld_service.py [--workdir runs/weld_bench] [--url URL] [--requests 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import httpx
from loadgen import ServiceProcess, run_load  # noqa: E402 - benchmarks/ is on sys.path via weld_common
from weld_common import DEFAULT_WORKDIR, prepare, upload_parts


def measure(url: str, parts: list, requests: int) -> None:
    def request(client: httpx.AsyncClient):
        return client.post("/weld/classify", files=parts)

    for concurrency, total in ((1, requests), (16, requests * 2)):
        print("/weld/classify uploads", run_load(url, request, concurrency, total).summary())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--url")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    _, repository, _ = prepare(args.workdir)
    parts = upload_parts(args.workdir / "data")
    print(f"one request = {sum(len(p[1][1]) for p in parts) / 1024:.0f} KiB of files")
    if args.url:
        measure(args.url, parts, args.requests)
        return
    with ServiceProcess(repository, env={"SERVICE_DEVICE": "cpu", "SERVICE_STATE_DIR": str(args.workdir / "state")}
                        ) as service:
        measure(service.url, parts, args.requests)


if __name__ == "__main__":
    main()
