"""Latency of POST /water/reconstruct against a real service process.

    python benchmarks/water_service.py --repository model_repository --requests 200 --concurrency 1,8

Starts `python -m service` on a free port serving --repository (which must hold a `water` model, e.g.
`make serve`'s default or `python -m export water --checkpoint ...`), sends synthetic samples of the
model's grid size with a random 75% of patches/steps set to null, and prints p50/p99 per concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.families.water.preprocessing import IMAGE_MODALITIES, MODALITIES, expand_patch_mask  # noqa: E402
from training.water.data import generate  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_requests(grid: dict, count: int, seed: int = 0) -> list[dict]:
    data = generate(count, grid["height"], grid["width"], grid["frames"], grid["series_len"], seed=seed)
    rng = np.random.default_rng(seed)
    hp, wp = grid["height"] // grid["patch"], grid["width"] // grid["patch"]
    bodies = []
    for i in range(count):
        sample = {"static": data.static[i].astype(float).tolist()}
        for m in MODALITIES:
            values = data.fields[m][i].astype(object)
            if m in IMAGE_MODALITIES:
                hidden = expand_patch_mask(rng.random((grid["frames"], hp, wp)) < 0.75, grid["patch"])
            else:
                hidden = rng.random(grid["series_len"]) < 0.75
            values[hidden] = None
            sample[m] = values.tolist()
        bodies.append({"samples": [sample]})
    return bodies


async def run(url: str, bodies: list[dict], concurrency: int) -> list[float]:
    latencies: list[float] = []
    payloads = [json.dumps(b).encode() for b in bodies]
    queue = list(payloads)

    async with httpx.AsyncClient(timeout=60) as client:
        async def worker() -> None:
            while queue:
                body = queue.pop()
                start = time.perf_counter()
                response = await client.post(f"{url}/water/reconstruct", content=body,
                                             headers={"content-type": "application/json"})
                latencies.append(time.perf_counter() - start)
                response.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--threads", default="1", help="SERVICE_CPU_THREADS")
    args = parser.parse_args()
    versions = sorted((p for p in (args.repository / "water").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    grid = json.loads((versions[-1] / "manifest.json").read_text())["preprocessing"]["grid"]
    port = free_port()
    env = {**os.environ, "SERVICE_MODEL_REPOSITORY": str(args.repository), "SERVICE_MODELS": "water",
           "SERVICE_DEVICE": "cpu", "SERVICE_CPU_THREADS": args.threads, "SERVICE_STATE_DIR": "/tmp/water-bench-state"}
    process = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit("service did not become ready")
        bodies = make_requests(grid, args.requests)
        asyncio.run(run(url, bodies[:10], 1))  # warm-up
        print(f"/water/reconstruct, grid {grid['frames']}x{grid['height']}x{grid['width']}, T_v={grid['series_len']}, "
              f"75% missing, one sample per request, {args.requests} requests")
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            start = time.perf_counter()
            lat = np.array(asyncio.run(run(url, bodies, concurrency))) * 1000
            wall = time.perf_counter() - start
            p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
            print(f"concurrency {concurrency:>3}: p50 {p50:7.1f} ms  p99 {p99:7.1f} ms"
                  f"  throughput {len(lat) / wall:6.1f} req/s")
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
