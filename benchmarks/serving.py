"""Serving fast path, side by side in one run: the bare-ASGI ceiling, the raw runtime, and the service with
JSON and with binary tensors over HTTP and with binary tensors over gRPC, at concurrency 1 and 64, for (a) the
tiny model (hidden 256, 16 floats in, max_batch_size 32) and (b) the traffic default (12x207x2 floats); prints
the ratios of issue 13 and gRPC's against HTTP's (issue 29).

    python benchmarks/serving.py [--seconds 3] [--traffic DIR] [--device cpu|cuda] [--only tiny|traffic]

`--traffic` is a traffic version folder (default: model_repository/traffic/<latest>, e.g. from
`make serve` or `python -m export.defaults`); without one part (b) is skipped and says so. Load comes from
wrk (`apt-get install wrk`), one thread, on the same machine: the ratios, not the absolute figures, are
what carries between machines. gRPC load comes from h2load (nghttp2's HTTP/2 load generator in C, `apt-get install
nghttp2-client`; one thread, one stream per connection, as wrk) posting the same length-prefixed gRPC message
with `content-type: application/grpc`, so both protocols meet a C client; without h2load, from
benchmarks/grpc_load.py (grpc.aio in this process), a Python client that takes more of the shared CPU than wrk
does, which then counts against gRPC. The ceiling is uvicorn (httptools, uvloop) with an ASGI app
that reads the body, parses the same OIP JSON with orjson and answers a fixed small JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from grpc_load import METHOD, grpc_load, infer_request  # noqa: E402

from families.repository_layout import latest_version_dir  # noqa: E402

LUA = """
local f = io.open(os.getenv("BODY_FILE"), "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("CTYPE")
local hl = os.getenv("HLEN")
if hl and hl ~= "" then wrk.headers["Inference-Header-Content-Length"] = hl end
"""


# ---- the ceiling: uvicorn + the least an OIP server must do -----------------------------------------------
async def ceiling_app(scope: dict, receive, send) -> None:  # noqa: ANN001 - ASGI
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    header_length = dict(scope["headers"]).get(b"inference-header-content-length")
    header = orjson.loads(body[:int(header_length)] if header_length else body)
    payload = orjson.dumps({"model_name": "ceiling", "outputs": [{"name": "y", "datatype": "FP32",
                                                                    "shape": [1, 1], "data": [len(header)]}]})
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


# ---- helpers -----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: server exited during start-up")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def wait_port(port: int, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"ceiling server on port {port} did not start")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, body: bytes, content_type: str, header_length: int | None, concurrency: int, seconds: float,
        workdir: Path) -> dict:
    """Closed-loop load with wrk: {p50_ms, p99_ms, rps, errors}."""
    body_file = workdir / f"body-{abs(hash(body))}.bin"
    body_file.write_bytes(body)
    script = workdir / "post.lua"
    script.write_text(LUA)
    env = {**os.environ, "BODY_FILE": str(body_file), "CTYPE": content_type,
           "HLEN": "" if header_length is None else str(header_length)}
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "60s", "--latency", "-s", str(script),
               url]
    out = subprocess.run(command,
                         capture_output=True, text=True, env=env, check=True).stdout

    def latency(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * _UNITS[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"p50_ms": latency("50%"), "p99_ms": latency("99%"),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "errors": int(errors.group(1)) if errors else 0,
            **({"socket_errors": socket_errors.group(1)} if socket_errors else {})}


def h2load_grpc(address: str, body: bytes, concurrency: int, seconds: float, workdir: Path) -> dict:
    """Closed-loop gRPC load with h2load: {p50_ms, p99_ms, rps, errors, client}. One gRPC call is checked with
    grpcio first: h2load sees HTTP statuses only, and gRPC puts its own status in the trailers."""
    import grpc

    with grpc.insecure_channel(address) as channel:
        channel.unary_unary(METHOD)(body, timeout=60)  # raises unless the call succeeds
    frame = workdir / f"grpc-{abs(hash(body))}.bin"
    frame.write_bytes(b"\x00" + len(body).to_bytes(4, "big") + body)  # gRPC framing: uncompressed, length
    log = workdir / "h2load.log"
    log.unlink(missing_ok=True)
    seconds = max(1, round(seconds))  # h2load takes whole seconds
    out = subprocess.run(["h2load", "-t1", f"-c{concurrency}", "-m1", f"-D{seconds}", "--warm-up-time=1",
                          "-d", str(frame), "-H", "content-type: application/grpc", "-H", "te: trailers",
                          "--log-file", str(log), f"http://{address}{METHOD}"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    ms = np.asarray([int(duration) / 1000 for _, status, duration in rows if status == "200"])
    failed = re.search(r"(\d+) failed, (\d+) errored", out)
    return {"p50_ms": float(np.percentile(ms, 50)) if ms.size else float("nan"),
            "p99_ms": float(np.percentile(ms, 99)) if ms.size else float("nan"),
            "rps": ms.size / seconds,
            "errors": (len(rows) - ms.size) + (int(failed.group(1)) + int(failed.group(2)) if failed else 0),
            "client": "h2load"}


def oip_bodies(name: str, x: np.ndarray) -> tuple[bytes, tuple[bytes, int]]:
    """(JSON body, (binary body, header length)) of one OIP request for input `name`."""
    entry = {"name": name, "datatype": "FP32", "shape": list(x.shape)}
    json_body = orjson.dumps({"inputs": [{**entry, "data": x.ravel().tolist()}]})
    header = orjson.dumps({"inputs": [{**entry, "parameters": {"binary_data_size": x.nbytes}}],
                           "parameters": {"binary_data_output": True}})
    return json_body, (header + x.astype("<f4").tobytes(), len(header))


def raw_runtime(version_dir: Path, device: str, max_batch: int, seconds: float) -> dict:
    """The runtime alone, as the service opens it: single-inference p50/p99 and throughput at max batch."""
    from families.manifest import Manifest
    from service.runtimes import open_runtime
    from service.settings import Settings

    manifest = Manifest.read(version_dir)
    runtime = open_runtime(version_dir, manifest.primary, device, Settings().cpu_threads)
    single = runtime.sample_inputs(1)
    batch = runtime.sample_inputs(max_batch)
    for _ in range(20):
        runtime.run(single)
    times = []
    end = time.perf_counter() + seconds / 2
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        runtime.run(single)
        times.append(time.perf_counter() - t0)
    runtime.run(batch)
    runs, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds / 2:
        runtime.run(batch)
        runs += 1
    samples_s = runs * max_batch / (time.perf_counter() - t0)
    ms = np.asarray(times) * 1000
    return {"single_p50_ms": float(np.percentile(ms, 50)), "single_p99_ms": float(np.percentile(ms, 99)),
            "batch": max_batch, "samples_per_s": samples_s}


def build_tiny(repository: Path, workdir: Path) -> None:
    """The issue's CLIs: train a hidden-256 tiny model, export it with max_batch_size=32."""
    python = sys.executable
    subprocess.run([python, "-m", "training.tiny.train", "--out", str(workdir / "tiny-train"), "--hidden", "256",
                    "--steps", "20"], cwd=ROOT, check=True, capture_output=True)
    subprocess.run([python, "-m", "export", "tiny", "--checkpoint", str(workdir / "tiny-train" / "best.pt"),
                    "--repository", str(repository), "--option", "max_batch_size=32"], cwd=ROOT, check=True,
                   capture_output=True)


def find_traffic(explicit: Path | None) -> Path | None:
    if explicit is not None:
        return explicit
    return latest_version_dir(ROOT / "model_repository" / "traffic")


# ---- the run -----------------------------------------------------------------------------------------
def measure_model(label: str, model: str, x: np.ndarray, service_url: str, ceiling_url: str | None,
                  raw: dict, seconds: float, workdir: Path, grpc_address: str) -> dict:
    json_body, (binary_body, header_length) = oip_bodies("x", x)
    grpc_body = infer_request(model, {"x": x})
    infer = f"{service_url}/v2/models/{model}/infer"
    result: dict = {"raw": raw}
    for concurrency in (1, 64):
        row = {}
        if ceiling_url is not None:
            row["ceiling"] = wrk(ceiling_url, json_body, "application/json", None, concurrency, seconds, workdir)
        row["json"] = wrk(infer, json_body, "application/json", None, concurrency, seconds, workdir)
        row["binary"] = wrk(infer, binary_body, "application/octet-stream", header_length, concurrency, seconds,
                            workdir)
        row["grpc"] = h2load_grpc(grpc_address, grpc_body, concurrency, seconds, workdir) if shutil.which("h2load") \
            else {**grpc_load(grpc_address, grpc_body, concurrency, seconds), "client": "grpc.aio"}
        result[f"c{concurrency}"] = row
        for kind, figures in row.items():
            print(f"{label:>8} c={concurrency:<3} {kind:>8}: p50 {figures['p50_ms']:7.2f} ms  p99 "
                  f"{figures['p99_ms']:7.2f} ms  {figures['rps']:8.0f} req/s  errors {figures['errors']}"
                  + (f" socket {figures['socket_errors']}" if "socket_errors" in figures else "")
                  + (f" ({figures['client']})" if "client" in figures else ""), flush=True)
    print(f"{label:>8} raw runtime: single p50 {raw['single_p50_ms']:.3f} ms p99 {raw['single_p99_ms']:.3f} ms; "
          f"batch {raw['batch']}: {raw['samples_per_s']:.0f} samples/s", flush=True)
    return result


def check(name: str, value: float, target: str, ok: bool) -> str:
    return f"  {'MET ' if ok else 'MISS'} {name}: {value:.3f} (target {target})"


def ratios(tiny: dict | None, traffic: dict | None) -> list[str]:
    lines = []
    if tiny:
        c64, c1, raw = tiny["c64"], tiny["c1"], tiny["raw"]
        for kind in ("json", "binary"):
            lines.append(check(f"tiny c64 {kind} throughput / ceiling", c64[kind]["rps"] / c64["ceiling"]["rps"],
                               ">= 0.35", c64[kind]["rps"] >= 0.35 * c64["ceiling"]["rps"]))
            lines.append(check(f"tiny c64 {kind} p99 / p50", c64[kind]["p99_ms"] / c64[kind]["p50_ms"], "<= 3",
                               c64[kind]["p99_ms"] <= 3 * c64[kind]["p50_ms"]))
            over = c1[kind]["p50_ms"] - raw["single_p50_ms"]
            lines.append(check(f"tiny c1 {kind} p50 - raw single (ms)", over, "<= 1.0", over <= 1.0))
            lines.append(check(f"tiny c1 {kind} p99 / p50", c1[kind]["p99_ms"] / c1[kind]["p50_ms"], "<= 2",
                               c1[kind]["p99_ms"] <= 2 * c1[kind]["p50_ms"]))
    if traffic:
        c64, c1, raw = traffic["c64"], traffic["c1"], traffic["raw"]
        for kind, budget in (("json", 2.0), ("binary", 1.0)):
            share = c64[kind]["rps"] / raw["samples_per_s"]
            lines.append(check(f"traffic c64 {kind} throughput / raw ORT at batch {raw['batch']}", share,
                               ">= 0.85", share >= 0.85))
            over = c1[kind]["p50_ms"] - raw["single_p50_ms"]
            lines.append(check(f"traffic c1 {kind} p50 - raw single (ms)", over, f"<= {budget}", over <= budget))
    for label, result in (("tiny", tiny), ("traffic", traffic)):
        if not result:
            continue
        for concurrency in (1, 64):
            row = result[f"c{concurrency}"]
            for kind in ("json", "binary"):
                if not (row["grpc"]["rps"] and row[kind]["rps"]):  # nothing answered within the run: no ratio
                    lines.append(f"  gRPC / HTTP {kind:<6} {label:>7} c{concurrency:<2}: n/a (nothing answered)")
                    continue
                lines.append(f"  gRPC / HTTP {kind:<6} {label:>7} c{concurrency:<2}: throughput "
                             f"{row['grpc']['rps'] / row[kind]['rps']:.2f}x, p50 "
                             f"{row['grpc']['p50_ms'] / row[kind]['p50_ms']:.2f}x, p99 "
                             f"{row['grpc']['p99_ms'] / row[kind]['p99_ms']:.2f}x")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="wrk duration per point")
    parser.add_argument("--traffic", type=Path, help="traffic version folder (default: model_repository/traffic)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=("tiny", "traffic"))
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the service (repeatable)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    seconds = max(1, round(args.seconds))
    traffic_dir = None if args.only == "tiny" else find_traffic(args.traffic)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        repository = workdir / "repo"
        if args.only != "traffic":
            build_tiny(repository, workdir)
        if traffic_dir is not None:
            shutil.copytree(traffic_dir, repository / "traffic" / traffic_dir.name)
        elif args.only != "tiny":
            print("traffic: no version folder (pass --traffic DIR or build model_repository); part (b) skipped")
        ceiling_port, service_port, grpc_port = free_port(), free_port(), free_port()
        ceiling = subprocess.Popen([sys.executable, "-m", "uvicorn", "serving:ceiling_app", "--app-dir",
                                    str(ROOT / "benchmarks"), "--port", str(ceiling_port), "--http", "httptools",
                                    "--loop", "uvloop", "--log-level", "warning", "--no-access-log"], cwd=ROOT)
        env = {**os.environ, "SERVICE_MODEL_REPOSITORY": str(repository), "SERVICE_DEVICE": args.device,
               "GRPC_PORT": str(grpc_port),
               **dict(kv.split("=", 1) for kv in args.env)}
        service = subprocess.Popen([sys.executable, "-m", "service", "--port", str(service_port), "--log-level",
                                    "warning"], cwd=ROOT, env=env)
        results: dict = {}
        try:
            wait_port(ceiling_port, ceiling)
            wait_ready(f"http://127.0.0.1:{service_port}/v2/health/ready", service)
            ceiling_url = f"http://127.0.0.1:{ceiling_port}/v2/models/ceiling/infer"
            started = time.perf_counter()
            if args.only != "traffic":
                tiny_dir = repository / "tiny" / "1"
                raw = raw_runtime(tiny_dir, args.device, 32, 2.0)
                x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
                results["tiny"] = measure_model("tiny", "tiny", x, f"http://127.0.0.1:{service_port}", ceiling_url,
                                                raw, seconds, workdir, f"127.0.0.1:{grpc_port}")
            if traffic_dir is not None:
                from families.manifest import Manifest

                version_dir = repository / "traffic" / traffic_dir.name
                max_batch = Manifest.read(version_dir).batching.max_batch_size
                raw = raw_runtime(version_dir, args.device, max_batch, 3.0)
                x = np.random.default_rng(0).uniform(0, 1, (1, 12, 207, 2)).astype(np.float32)
                results["traffic"] = measure_model("traffic", "traffic", x, f"http://127.0.0.1:{service_port}",
                                                   None, raw, seconds, workdir, f"127.0.0.1:{grpc_port}")
            print(f"measured in {time.perf_counter() - started:.0f} s; ratios:")
            for line in ratios(results.get("tiny"), results.get("traffic")):
                print(line)
        finally:
            stop(service)
            stop(ceiling)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
