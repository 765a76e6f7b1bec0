"""gRPC server design, measured: grpcio's asyncio server on the service's event loop (what service/grpc ships)
against grpcio's classic server with its own thread pool, whose handlers hand each call to the event loop
that owns the model hub and batchers (`run_coroutine_threadsafe`), at concurrency 1 and 64 on the tiny model.

    python benchmarks/grpc_modes.py [--seconds 3] [--threads 64]

Both servers run the same app (create_app, uvloop, one process each, SERVICE_CPU_THREADS=1) on the same
repository, one at a time; the load is h2load (C, see benchmarks/serving.py) or, without it,
benchmarks/grpc_load.py (grpc.aio, raw tensors) from this process. Decoding and encoding run in the handler
thread in thread-pool mode (only `infer` goes to the loop), so the thread-pool design is given its best case.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from grpc_load import grpc_load, infer_request  # noqa: E402
from serving import build_tiny, free_port, h2load_grpc, stop, wait_port  # noqa: E402


def serve(mode: str, repository: Path, port: int, threads: int) -> None:
    """The app on uvloop with gRPC served by `mode` ("aio" or "threads") until SIGTERM."""
    import grpc
    import uvloop

    from service.app import create_app
    from service.dataplane.context import RequestContext
    from service.grpc.protos import grpc_service_pb2 as pb
    from service.grpc.protos import grpc_service_pb2_grpc as pb_grpc
    from service.grpc.tensors import decode_inputs, encode_outputs, requested_outputs
    from service.settings import Settings

    settings = Settings(model_repository=repository, device="cpu", cpu_threads=1, state_dir=repository / ".state")
    app = create_app(settings, grpc_listen=("127.0.0.1", port) if mode == "aio" else None)

    class Bridged(pb_grpc.GRPCInferenceServiceServicer):
        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self.loop = loop

        def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
            loaded = app.state.hub.get(request.model_name)  # a dict lookup: safe from this thread
            inputs = decode_inputs(request)
            remaining = context.time_remaining()
            ctx = RequestContext(deadline=None if remaining is None else time.monotonic() + remaining)
            outputs = asyncio.run_coroutine_threadsafe(loaded.infer(inputs, ctx), self.loop).result()
            response = pb.ModelInferResponse(model_name=loaded.name, model_version=str(loaded.version))
            encode_outputs(response, outputs, requested_outputs(request, list(outputs)))
            return response

    async def main() -> None:
        stopped = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
        async with app.router.lifespan_context(app):
            server = None
            if mode == "threads":
                server = grpc.server(ThreadPoolExecutor(max_workers=threads),
                                     options=[("grpc.so_reuseport", 0)])
                pb_grpc.add_GRPCInferenceServiceServicer_to_server(Bridged(asyncio.get_running_loop()), server)
                server.add_insecure_port(f"127.0.0.1:{port}")
                server.start()
            while not app.state.hub.ready:
                await asyncio.sleep(0.05)
            Path(os.environ["READY_FILE"]).touch()
            await stopped.wait()
            if server is not None:
                server.stop(0)

    uvloop.run(main())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(mode: str, repository: Path, workdir: Path, seconds: float, threads: int) -> dict:
    port = free_port()
    ready = workdir / f"ready-{mode}"
    ready.unlink(missing_ok=True)  # from an earlier round
    process = subprocess.Popen([sys.executable, __file__, "--serve", mode, str(repository), str(port),
                                "--threads", str(threads)], cwd=ROOT, env={**os.environ, "READY_FILE": str(ready)})
    try:
        wait_port(port, process, timeout_s=120)
        deadline = time.monotonic() + 120
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{mode} server did not come ready")
            time.sleep(0.1)
        x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
        body = infer_request("tiny", {"x": x})
        results = {}
        for concurrency in (1, 64):
            cpu_before, wall_before = cpu_seconds(process.pid), time.perf_counter()
            address = f"127.0.0.1:{port}"
            results[concurrency] = figures = h2load_grpc(address, body, concurrency, seconds, workdir) \
                if shutil.which("h2load") else grpc_load(address, body, concurrency, seconds)
            wall = time.perf_counter() - wall_before
            # Server CPU per second of the run (1.0 = one core busy) and per answered call: the run includes the
            # load generator's warm-up, so CPU per call is a slight overestimate, the same in both modes.
            figures["cores"] = (cpu_seconds(process.pid) - cpu_before) / wall
            figures["cpu_us_per_call"] = figures["cores"] * 1e6 / figures["rps"]
            print(f"{mode:>8} c={concurrency:<3}: p50 {figures['p50_ms']:7.2f} ms  p99 {figures['p99_ms']:7.2f} ms  "
                  f"{figures['rps']:8.0f} req/s  errors {figures['errors']}  server {figures['cores']:.2f} cores, "
                  f"{figures['cpu_us_per_call']:.0f} CPU-us/call", flush=True)
        return results
    finally:
        stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=64, help="thread-pool size of the classic server")
    parser.add_argument("--rounds", type=int, default=2, help="alternate the two servers this many times")
    parser.add_argument("--serve", nargs=3, metavar=("MODE", "REPOSITORY", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        mode, repository, port = args.serve
        serve(mode, Path(repository), int(port), args.threads)
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        repository = workdir / "repo"
        build_tiny(repository, workdir)
        # Alternated (aio, threads, threads, aio, ...) so that a drift in the machine's other load hits both.
        runs: dict[str, list[dict]] = {"aio": [], "threads": []}
        for round_ in range(args.rounds):
            for mode in ("aio", "threads") if round_ % 2 == 0 else ("threads", "aio"):
                runs[mode].append(measure(mode, repository, workdir, args.seconds, args.threads))
    for concurrency in (1, 64):
        def best(mode: str, key: str, pick=max, concurrency: int = concurrency) -> float:
            return pick(run[concurrency][key] for run in runs[mode])

        print(f"c={concurrency} (best of {args.rounds}): asyncio/thread-pool throughput "
              f"{best('aio', 'rps') / best('threads', 'rps'):.2f}x, p50 {best('aio', 'p50_ms', min):.2f} vs "
              f"{best('threads', 'p50_ms', min):.2f} ms, p99 {best('aio', 'p99_ms', min):.2f} vs "
              f"{best('threads', 'p99_ms', min):.2f} ms, CPU-us/call {best('aio', 'cpu_us_per_call', min):.0f} vs "
              f"{best('threads', 'cpu_us_per_call', min):.0f}, server cores {best('aio', 'cores'):.2f} vs "
              f"{best('threads', 'cores'):.2f}")


if __name__ == "__main__":
    main()
