"""`POST /traffic/forecast` latency (p50/p99) and throughput against a running service.

    make serve   # or: python -m service  (serves the default traffic model, N=207)
    python benchmarks/traffic_latency.py --url http://127.0.0.1:8000 --concurrency 1,64 --requests 200

Each request is one window (the last 12 readings of every sensor of the served model, ~8% missing) with a
fresh random start time. For every concurrency level it prints p50/p90/p99 latency, requests/s and the
status counts; non-200 answers (e.g. 429 when the queue is full) are counted, not timed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import run_load  # noqa: E402


def make_body(sensor_ids: list[str], rng: np.random.Generator, windows: int) -> dict:
    out = []
    for _ in range(windows):
        values = rng.uniform(15, 70, size=(len(sensor_ids), 12)).round(1)
        values[rng.random(values.shape) < 0.08] = 0.0
        last = np.datetime64("2012-05-01T00:00") + int(rng.integers(0, 7 * 288)) * np.timedelta64(300, "s")
        out.append({"sensor_ids": sensor_ids, "values": values.tolist(), "last_timestamp": str(last)})
    return {"windows": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", help="model name (default: the family's default model)")
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--windows", type=int, default=1, help="windows per request")
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()

    params = {"model": args.model} if args.model else {}
    info = httpx.get(f"{args.url}/traffic/sensors", params=params, timeout=30).raise_for_status().json()
    rng = np.random.default_rng(0)
    bodies = [json.dumps(make_body(info["sensor_ids"], rng, args.windows)).encode() for _ in range(32)]
    print(f"model {info['model']} v{info['version']}: N={len(info['sensor_ids'])} sensors, "
          f"{args.windows} window(s)/request, body {len(bodies[0]) / 1024:.0f} KiB")
    cycle = itertools.cycle(bodies)

    def request(client: httpx.AsyncClient):
        return client.post("/traffic/forecast", params=params, content=next(cycle),
                           headers={"content-type": "application/json"})

    results = []
    for level in (int(c) for c in args.concurrency.split(",")):
        result = run_load(args.url, request, level, args.requests, warmup=args.warmup)
        print(result.summary() + f", p90 {result.percentile_ms(90):.1f} ms")
        results.append({"concurrency": level, "requests": result.requests, "statuses": dict(result.statuses),
                        **{f"p{q}_ms": result.percentile_ms(q) for q in (50, 90, 99)},
                        "throughput_rps": result.throughput, "wall_s": result.seconds})
    print(json.dumps({"model": info["model"], "version": info["version"], "sensors": len(info["sensor_ids"]),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
