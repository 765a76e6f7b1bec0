"""The size and scrape time of /metrics: idle, and while a mixed workload runs (issue 28).

    python benchmarks/metrics_page.py [--repository tests/golden/repository] [--rounds 40] [--scrapes 20]
                                      [--code /path/to/another/checkout]   # e.g. the commit before, to compare

Starts `python -m service` on a free port with the repository (default: the golden one, every family), replays
the golden requests (every task route, /v2 metadata and infer; codec streams decoded again) plus requests that
fail (unknown model, malformed body, unknown path) `rounds` times from 4 threads, then prints the page's bytes,
lines (bucket lines among them) and the median / p90 scrape time idle and under that load.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from golden import cases  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(client: httpx.Client) -> tuple[float, str]:
    started = time.perf_counter()
    text = client.get("/metrics").text
    return (time.perf_counter() - started) * 1000, text


def _cpu_ms(pid: int) -> float:
    """CPU time the process used so far (user + system), in ms: unlike wall time, not inflated by waiting for a
    shared core."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def _figures(client: httpx.Client, scrapes: int, pid: int) -> dict[str, float]:
    """The page: wall time per scrape, and the server's CPU per scrape (N scrapes back to back); a liveness
    probe's beside (the floor: HTTP and the loop without the page). Under load the server's CPU includes the
    load's."""
    times, floor, text = [], [], ""
    before = _cpu_ms(pid)
    for _ in range(scrapes):
        ms, text = _scrape(client)
        times.append(ms)
    page_cpu = _cpu_ms(pid) - before
    before = _cpu_ms(pid)
    for _ in range(scrapes):
        started = time.perf_counter()
        client.get("/v2/health/live")
        floor.append((time.perf_counter() - started) * 1000)
    probe_cpu = _cpu_ms(pid) - before
    times.sort()
    lines = text.splitlines()
    return {"bytes": len(text.encode()), "lines": len(lines), "bucket_lines": sum("_bucket{" in x for x in lines),
            "created_lines": sum("_created" in x for x in lines), "p50_ms": round(statistics.median(times), 1),
            "p90_ms": round(times[int(0.9 * (len(times) - 1))], 1), "probe_p50_ms": round(statistics.median(floor), 1),
            "server_cpu_ms_per_scrape": round(page_cpu / scrapes, 1),
            "server_cpu_ms_per_probe": round(probe_cpu / scrapes, 1)}


def _workload(url: str, requests: list[dict], rounds: int) -> None:
    failing = [{"method": "POST", "path": "/v2/models/nope/infer", "json": {"inputs": []}},
               {"method": "POST", "path": "/traffic/forecast", "json": {"windows": "x"}},
               {"method": "GET", "path": "/no/such/path"},
               {"method": "POST", "path": "/v2/models/tiny/infer", "json": {"inputs": [{"name": "x"}]}}]
    with httpx.Client(base_url=url, timeout=120) as client:
        for _ in range(rounds):
            for request in [*requests, *failing]:
                cases.send(client, request)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=cases.REPOSITORY)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose service is measured")
    parser.add_argument("--save", type=Path, help="write the last page here")
    args = parser.parse_args()
    port = _free_port()
    env = {**os.environ, "SERVICE_MODEL_REPOSITORY": str(args.repository), "PORT": str(port), "GRPC_PORT": "0",
           "LOG_LEVEL": "warning", "SERVICE_STATE_DIR": str(Path("/tmp") / f"metrics-page-{port}"),
           "PYTHONPATH": str(args.code)}
    server = subprocess.Popen([sys.executable, "-m", "service"], cwd=args.code, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            for _ in range(600):
                try:
                    if client.get("/v2/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            requests = [case["request"] for case in cases.load()["cases"]]
            _workload(url, requests, 1)  # every series exists before the idle figures
            print("idle (after one round)", _figures(client, args.scrapes, server.pid))
            workers = [threading.Thread(target=_workload, args=(url, requests, args.rounds)) for _ in range(4)]
            for worker in workers:
                worker.start()
            time.sleep(1.0)
            print("under load", _figures(client, args.scrapes, server.pid))
            for worker in workers:
                worker.join()
            print("idle (after the load)", _figures(client, args.scrapes, server.pid))
            if args.save:
                args.save.write_text(client.get("/metrics").text)
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
