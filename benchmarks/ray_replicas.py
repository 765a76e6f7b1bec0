"""Throughput and latency of the service on Ray Serve with 1 and 2 replicas per family (deploy/ray).

Two applications side by side on one local Ray instance, built from the same repository: `r1` (route_prefix
/r1, one replica per family) and `r2` (/r2, two replicas per family), each with its own ingress, and for
reference the one-process service (`python -m service`, the same two families, SERVICE_CPU_THREADS as a
replica's). Rounds alternate between them (1 process, r1, r2, 1 process, ...) so machine noise hits all
alike; each round drives POST /traffic/forecast and POST /weld/classify with `--concurrency` closed-loop
clients (benchmarks/loadgen.py) for about `--seconds` seconds. Prints req/s, p50 and p99 per round and the
medians over rounds, with the 2-replica / 1-replica ratio. The load average is printed per round: other work
on the machine shows there.

    .venv/bin/python benchmarks/ray_replicas.py [--repository model_repository] [--concurrency 16] \
        [--seconds 5] [--rounds 3] [--num-cpus 0.25] [--cpus N] [--no-one-process]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
from loadgen import LoadResult, ServiceProcess, run_load  # noqa: E402

from deploy.ray.launch import wait_ready  # noqa: E402

FAMILIES = ("traffic", "weld")


def forecast_body(repository: Path) -> dict:
    manifest = json.loads((repository / "traffic" / "1" / "manifest.json").read_text())
    ids = list(manifest["preprocessing"]["sensor_ids"])
    values = np.random.default_rng(0).uniform(20, 70, size=(len(ids), 12)).round(1).tolist()
    stamps = np.datetime64("2012-03-05T08:55:00") + np.arange(-11, 1) * np.timedelta64(5, "m")
    return {"windows": [{"sensor_ids": ids, "values": values, "timestamps": [str(s) for s in stamps]}]}


def classify_body(repository: Path) -> dict:
    from families.weld.preprocessing import MODALITIES, PreprocessParams

    manifest = json.loads((repository / "weld" / "1" / "manifest.json").read_text())
    shapes = PreprocessParams.from_dict(manifest["preprocessing"]["params"]).shapes()
    rng = np.random.default_rng(0)
    sample = {m: rng.uniform(0, 1, shapes[m]).astype(np.float32).round(3).tolist() for m in MODALITIES}
    return {"samples": [{**sample, "id": "bench"}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]



def drive(url: str, path: str, body: bytes, concurrency: int, seconds: float) -> LoadResult:
    """About `seconds` of closed-loop load: a short calibration run sizes the request count."""
    def request(client: httpx.AsyncClient):
        return client.post(path, content=body, headers={"content-type": "application/json"})

    probe = run_load(url, request, concurrency, concurrency * 2, warmup=2)
    total = max(concurrency * 4, int(probe.throughput * seconds))
    return run_load(url, request, concurrency, total, warmup=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-cpus", type=float, default=0.25, help="CPU share of each family replica")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray instance")
    parser.add_argument("--no-one-process", action="store_true", help="skip the one-process reference")
    args = parser.parse_args()

    import ray
    from ray import serve

    from deploy.ray.serve_app import build_app, threads_for

    repository = args.repository.resolve()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    state = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    for replicas in (1, 2):
        app_args = {"repository": str(repository), "families": list(FAMILIES), "replicas": replicas,
                    "ingress_replicas": 1, "num_cpus": args.num_cpus, "state_dir": str(state / f"r{replicas}"),
                    "metrics_dir": None, "graceful_shutdown_timeout_s": 2, "settings": {"device": "cpu"}}
        serve.run(build_app(app_args), name=f"r{replicas}", route_prefix=f"/r{replicas}", blocking=False)
    for replicas in (1, 2):
        wait_ready(f"{base}/r{replicas}", 600.0)
    single = None if args.no_one_process else ServiceProcess(repository, env={
        "SERVICE_MODELS": ",".join(FAMILIES), "SERVICE_DEVICE": "cpu",
        "SERVICE_STATE_DIR": str(state / "one"), "SERVICE_CPU_THREADS": str(threads_for(args.num_cpus))})
    contenders = {**({0: single.url} if single else {}), 1: f"{base}/r1", 2: f"{base}/r2"}
    label = {0: "1 process ", 1: "1 replica ", 2: "2 replicas"}
    bodies = {"/traffic/forecast": json.dumps(forecast_body(repository)).encode(),
              "/weld/classify": json.dumps(classify_body(repository)).encode()}
    print(f"Ray {ray.__version__}, {args.cpus} CPUs, num_cpus {args.num_cpus} per family replica, "
          f"concurrency {args.concurrency}, ~{args.seconds:g} s per round, {args.rounds} rounds; "
          f"families {', '.join(FAMILIES)} from {repository}")
    results: dict[tuple[str, int], list[LoadResult]] = {}
    try:
        for round_ in range(args.rounds):
            for key, url in contenders.items():
                for path, body in bodies.items():
                    result = drive(url, path, body, args.concurrency, args.seconds)
                    results.setdefault((path, key), []).append(result)
                    print(f"round {round_} {path:<18} {label[key]}: {result.summary()}, "
                          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        if single is not None:
            single.__exit__()
        serve.shutdown()
        ray.shutdown()

    print("\nmedian over rounds:")
    for path in bodies:
        rows = {}
        for key in contenders:
            runs = results[(path, key)]
            rows[key] = (statistics.median(r.throughput for r in runs),
                         statistics.median(r.percentile_ms(50) for r in runs),
                         statistics.median(r.percentile_ms(99) for r in runs),
                         sum(r.errors for r in runs))
            rps, p50, p99, errors = rows[key]
            print(f"{path:<18} {label[key]}: {rps:7.1f} req/s  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
                  f"errors {errors}")
        print(f"{path:<18} 2/1 replicas: throughput x{rows[2][0] / rows[1][0]:.2f}, "
              f"p50 x{rows[2][1] / rows[1][1]:.2f}, p99 x{rows[2][2] / rows[1][2]:.2f}")


if __name__ == "__main__":
    main()
