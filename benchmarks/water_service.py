"""Latency of POST /water/reconstruct against a real service process.

    python benchmarks/water_service.py --repository model_repository --requests 200 --concurrency 1,8

Starts `python -m service` on a free port serving --repository (which must hold a `water` model, e.g.
`make serve`'s default or `python -m export water --checkpoint ...`), sends synthetic samples of the
model's grid size with a random 75% of patches/steps set to null, and prints p50/p99 per concurrency.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from loadgen import ServiceProcess, run_load  # noqa: E402

from families.repository_layout import latest_manifest  # noqa: E402
from families.water.preprocessing import IMAGE_MODALITIES, MODALITIES, expand_patch_mask  # noqa: E402
from training.water.data import generate  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--threads", default="1", help="SERVICE_CPU_THREADS")
    args = parser.parse_args()
    manifest = latest_manifest(args.repository / "water")
    if manifest is None:
        raise SystemExit(f"no water model in {args.repository}")
    grid = manifest["preprocessing"]["grid"]
    env = {"SERVICE_MODELS": "water", "SERVICE_DEVICE": "cpu", "SERVICE_CPU_THREADS": args.threads,
           "SERVICE_STATE_DIR": "/tmp/water-bench-state"}
    payloads = itertools.cycle([json.dumps(b).encode() for b in make_requests(grid, args.requests)])

    def request(client: httpx.AsyncClient):
        return client.post("/water/reconstruct", content=next(payloads), headers={"content-type": "application/json"})

    with ServiceProcess(args.repository, env) as service:
        print(f"/water/reconstruct, grid {grid['frames']}x{grid['height']}x{grid['width']}, T_v={grid['series_len']}, "
              f"75% missing, one sample per request, {args.requests} requests")
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            print(run_load(service.url, request, concurrency, args.requests, warmup=10).summary())

if __name__ == "__main__":
    main()
