"""`POST /traffic/forecast` latency (p50/p99) and throughput against a running service.

    make serve   # or: python -m service  (serves the default traffic model, N=207)
    python benchmarks/traffic_latency.py --url http://127.0.0.1:8000 --concurrency 1,64 --requests 200

Each request is one window (the last 12 readings of every sensor of the served model, ~8% missing) with a
fresh random start time. For every concurrency level it prints p50/p90/p99 latency, requests/s and the
status counts; non-200 answers (e.g. 429 when the queue is full) are counted, not timed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter

import httpx
import numpy as np


def make_body(sensor_ids: list[str], rng: np.random.Generator, windows: int) -> dict:
    out = []
    for _ in range(windows):
        values = rng.uniform(15, 70, size=(len(sensor_ids), 12)).round(1)
        values[rng.random(values.shape) < 0.08] = 0.0
        last = np.datetime64("2012-05-01T00:00") + int(rng.integers(0, 7 * 288)) * np.timedelta64(300, "s")
        out.append({"sensor_ids": sensor_ids, "values": values.tolist(), "last_timestamp": str(last)})
    return {"windows": out}


async def run_level(url: str, params: dict, bodies: list[bytes], concurrency: int, total: int) -> dict:
    latencies: list[float] = []
    statuses: Counter = Counter()
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            for i in counter:
                started = time.perf_counter()
                response = await client.post(f"{url}/traffic/forecast", params=params, content=bodies[i % len(bodies)],
                                             headers={"content-type": "application/json"})
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency, "requests": total, "ok": len(latencies), "statuses": dict(statuses),
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p90_ms": float(np.percentile(ms, 90)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
        "throughput_rps": len(latencies) / wall, "wall_s": wall,
    }


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
    asyncio.run(run_level(args.url, params, bodies, 1, args.warmup))
    results = []
    for level in (int(c) for c in args.concurrency.split(",")):
        result = asyncio.run(run_level(args.url, params, bodies, level, args.requests))
        results.append(result)
        print(f"concurrency {level:>3}: p50 {result['p50_ms']:.1f} ms  p90 {result['p90_ms']:.1f} ms  "
              f"p99 {result['p99_ms']:.1f} ms  throughput {result['throughput_rps']:.1f} req/s  "
              f"statuses {result['statuses']}")
    print(json.dumps({"model": info["model"], "version": info["version"], "sensors": len(info["sensor_ids"]),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
