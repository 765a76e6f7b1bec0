"""What a shadow rollout costs the baseline's latency (issue 31): p50 / p99 of `POST /traffic/forecast` on a
live server with no rollout and with a shadow rollout of a second version, in alternating rounds (A B A B ...)
so that a drifting machine load hits both sides alike. Prints the p50 ratio (target: under +5 %).

    python benchmarks/rollout_shadow_cost.py [--repository DIR] [--requests 200] [--rounds 4] [--concurrency 1]

Without --repository, traffic v1 and v2 are exported from the shipped checkpoint with the CLI into a temporary
folder. v1 is loaded explicitly (the served version), v2 is the candidate.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from harness import LiveServer  # noqa: E402

TOKEN = "bench-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
CHECKPOINT = ROOT / "models" / "traffic" / "traffic-research.pt"


def export(repository: Path, version: int) -> None:
    subprocess.run([sys.executable, "-m", "export", "traffic", "--checkpoint", str(CHECKPOINT), "--repository",
                    str(repository), "--version", str(version), "--no-torchscript"], cwd=ROOT, check=True,
                   capture_output=True)


def phase(url: str, bodies: list[dict], concurrency: int) -> list[float]:
    """Closed loop: `concurrency` clients, each sending its share of `bodies` one after the other."""
    latencies: list[float] = []
    lock = threading.Lock()

    def client(share: list[dict]) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            for body in share:
                started = time.perf_counter()
                answer = http.post("/traffic/forecast", json=body)
                elapsed = time.perf_counter() - started
                assert answer.status_code == 200, answer.text[:300]
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=client, args=(bodies[k::concurrency],)) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def quantile(values: list[float], q: float) -> float:
    return float(np.quantile(np.array(values), q) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path)
    parser.add_argument("--requests", type=int, default=200, help="requests per round and side")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--shadow-percent", default="100,10", help="shares of requests copied, one side each")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
    repository = args.repository
    if repository is None:
        repository = workdir / "repository"
        export(repository, 1)
        export(repository, 2)
    server = LiveServer(repository, workdir / "server.log", env={"SERVICE_ADMIN_TOKEN": TOKEN})
    try:
        server.wait_ready()
        http = httpx.Client(base_url=server.url, timeout=120)
        loaded = http.post("/v2/repository/models/traffic/load", json={"parameters": {"version": 1}}, headers=AUTH)
        assert loaded.status_code == 200, loaded.text
        sensors = http.get("/traffic/sensors").json()["sensor_ids"]
        rng = np.random.default_rng(0)
        origin = datetime(2012, 5, 7, 8, 0)

        def bodies(n: int) -> list[dict]:
            return [{"windows": [{"sensor_ids": sensors, "last_timestamp": (origin + timedelta(minutes=5 * k))
                                  .isoformat(), "values": rng.uniform(30, 65, (len(sensors), 12)).round(1).tolist()}]}
                    for k in range(n)]

        phase(server.url, bodies(50), args.concurrency)  # warm-up
        shares = [float(p) for p in args.shadow_percent.split(",")]
        off: list[float] = []
        on: dict[float, list[float]] = {share: [] for share in shares}
        run = dict.fromkeys(shares, 0)
        dropped = dict.fromkeys(shares, 0)
        for _ in range(args.rounds):
            off += phase(server.url, bodies(args.requests), args.concurrency)
            for share in shares:
                started = http.put("/admin/rollouts/traffic", headers=AUTH,
                                   json={"candidate": 2, "mode": "shadow", "shadow_percent": share})
                assert started.status_code == 200, started.text
                on[share] += phase(server.url, bodies(args.requests), args.concurrency)
                time.sleep(1.0)  # the queue's last copies finish before the rollout ends
                state = http.delete("/admin/rollouts/traffic", headers=AUTH).json()
                run[share] += state["shadow"]["run"]
                dropped[share] += sum(state["shadow"]["dropped"].values())
        p50_off = quantile(off, 0.5)
        print(f"concurrency {args.concurrency}, {args.rounds} rounds x {args.requests} requests per side")
        print(f"no rollout:        p50 {p50_off:.2f} ms, p99 {quantile(off, 0.99):.2f} ms, mean "
              f"{statistics.mean(off) * 1000:.2f} ms")
        for share in shares:
            p50_on = quantile(on[share], 0.5)
            print(f"shadow {share:5.1f} %:    p50 {p50_on:.2f} ms, p99 {quantile(on[share], 0.99):.2f} ms, mean "
                  f"{statistics.mean(on[share]) * 1000:.2f} ms; copies run {run[share]}, dropped {dropped[share]}; "
                  f"cost on the baseline's p50 {100 * (p50_on / p50_off - 1):+.1f} % (target < +5 %)")
        http.close()
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
