"""The service on a device vs the raw torch module, per family (issue 27; run by benchmarks/gpu_check.sh).

    python benchmarks/gpu_serving.py REPOSITORY [--device cuda] [--seconds 3] [--models traffic,weld,water]
        [--json OUT.json]

For each model of REPOSITORY whose primary graph is batchable (traffic, weld, water; the codec is timed by
benchmarks/gpu_codec.py), at its manifest's max batch:
- raw: the graph's TorchScript twin called directly with inputs already on the device (torch.jit.load,
  synchronised): single-sample latency and samples/s at max batch; and the service's own runtime object
  (numpy in and out, copies included), as `open_runtime` gives it for SERVICE_RUNTIME=auto;
- service: `python -m service` on the device (SERVICE_RUNTIME=auto), binary OIP requests of one sample from a
  closed loop of asyncio clients at concurrency 1 and at max batch: p50/p99 and req/s, with dynamic batching
  on (the manifest's limits) and off (a copy of the repository with max_batch_size 1);
- ratios: service throughput at concurrency = max batch over the raw module's samples/s at max batch, and
  the c=1 overhead (service p50 - raw runtime single p50).
No wrk needed (the device machine has none; benchmarks/serving.py needs it): one client process, so the
highest rates are bounded by the client as well as by the service (said beside the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from families.repository_layout import latest_version_dir  # noqa: E402


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, seconds: float, device: str) -> list[float]:
    for _ in range(5):
        fn()
    sync(device)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def raw(version_dir: Path, device: str, seconds: float) -> dict:
    """The TorchScript module alone (inputs on the device) and the service's runtime object (numpy in/out)."""
    import torch

    from families.manifest import Manifest
    from service.runtimes import open_runtime
    from service.runtimes.torchscript import apply_process_settings

    apply_process_settings(0)  # the service's process-wide torch settings (TF32 off)
    manifest = Manifest.read(version_dir)
    graph = manifest.primary
    batch = manifest.batching.max_batch_size
    runtime = open_runtime(version_dir, graph, device, runtime="auto")
    single_np, batch_np = runtime.sample_inputs(1), runtime.sample_inputs(batch)
    result: dict = {"max_batch": batch, "runtime": runtime.name}
    if graph.torchscript is not None or graph.format == "torchscript":
        file = graph.file if graph.format == "torchscript" else graph.torchscript.file
        module = torch.jit.load(str(version_dir / file), map_location=device).eval()

        def on_device(arrays: dict[str, np.ndarray]) -> list[torch.Tensor]:
            return [torch.from_numpy(arrays[spec.name]).to(device) for spec in graph.inputs]

        one, full = on_device(single_np), on_device(batch_np)
        with torch.inference_mode():
            single = timed(lambda: module(*one), seconds / 4, device)
            full_t = timed(lambda: module(*full), seconds / 4, device)
        result["module_single_p50_ms"] = 1000 * float(np.median(single))
        result["module_samples_per_s"] = batch / float(np.median(full_t))
    single = timed(lambda: runtime.run(single_np), seconds / 4, device)
    full_t = timed(lambda: runtime.run(batch_np), seconds / 4, device)
    result["runtime_single_p50_ms"] = 1000 * float(np.median(single))
    result["runtime_samples_per_s"] = batch / float(np.median(full_t))
    return result


def binary_request(version_dir: Path) -> tuple[bytes, int]:
    """(body, header length) of one binary OIP request of one sample of the primary graph."""
    import orjson

    from families.manifest import Manifest
    from service.runtimes.base import Runtime

    graph = Manifest.read(version_dir).primary

    class _Sampler(Runtime):  # sample_inputs of the graph without opening a runtime
        name = "sampler"

        def run(self, inputs):  # noqa: ANN001, ANN202 - never called
            raise NotImplementedError

    inputs = _Sampler(graph, "cpu").sample_inputs(1)
    entries, blobs = [], []
    for spec in graph.inputs:
        data = np.ascontiguousarray(inputs[spec.name]).tobytes()
        entries.append({"name": spec.name, "datatype": spec.datatype, "shape": list(inputs[spec.name].shape),
                        "parameters": {"binary_data_size": len(data)}})
        blobs.append(data)
    header = orjson.dumps({"inputs": entries, "parameters": {"binary_data_output": True}})
    return header + b"".join(blobs), len(header)


async def closed_loop(url: str, body: bytes, header_length: int, concurrency: int, seconds: float) -> dict:
    import httpx

    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(header_length)}
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for _ in range(3):  # warm the connection and the model
            await client.post(url, content=body, headers=headers)
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                response = await client.post(url, content=body, headers=headers)
                latencies.append(time.perf_counter() - t0)
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {"concurrency": concurrency, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "rps": len(latencies) / elapsed, "requests": len(latencies), "errors": errors}


def unbatched_copy(repository: Path, models: list[str], target: Path) -> Path:
    """The repository with max_batch_size 1 in every manifest (the manifest is outside its own checksums)."""
    from families.manifest import MANIFEST_FILE, Manifest

    for model in models:
        version_dir = latest_version_dir(repository / model)
        copy = target / model / version_dir.name
        shutil.copytree(version_dir, copy)
        manifest = Manifest.read(copy)
        manifest.batching.max_batch_size = 1
        (copy / MANIFEST_FILE).write_text(manifest.to_json())
    return target


def serve_and_measure(repository: Path, models: list[str], device: str, seconds: float, label: str,
                      log_dir: Path, concurrencies: dict[str, int]) -> dict:
    from harness import LiveServer

    server = LiveServer(repository, log_dir / f"service-{label}.log",
                        env={"SERVICE_DEVICE": device, "SERVICE_RUNTIME": "auto", "SERVICE_CPU_THREADS": "0",
                             "SERVICE_MODELS": ",".join(models)})
    results: dict = {}
    try:
        server.wait_ready(240)
        for model in models:
            body, header_length = binary_request(latest_version_dir(repository / model))
            url = f"{server.url}/v2/models/{model}/infer"
            results[model] = {}
            for concurrency in sorted({1, concurrencies[model]}):
                row = asyncio.run(closed_loop(url, body, header_length, concurrency, seconds))
                results[model][f"c{concurrency}"] = row
                print(f"service {label:<12} {model:<8} c={concurrency:<3} p50 {row['p50_ms']:7.2f} ms p99 "
                      f"{row['p99_ms']:7.2f} ms {row['rps']:8.0f} req/s errors {row['errors']}", flush=True)
    finally:
        server.terminate()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--models", default="traffic,weld,water")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--log-dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    from families.manifest import Manifest

    models = [m for m in args.models.split(",") if m and (args.repository / m).is_dir()
              and latest_version_dir(args.repository / m) is not None]
    skipped = sorted(set(args.models.split(",")) - set(models))
    if skipped:
        print(f"not in {args.repository}: {skipped}")
    report: dict = {"device": args.device, "raw": {}, "batching_on": {}, "batching_off": {}, "ratios": {}}
    max_batch = {}
    for model in models:
        version_dir = latest_version_dir(args.repository / model)
        max_batch[model] = Manifest.read(version_dir).batching.max_batch_size
        report["raw"][model] = r = raw(version_dir, args.device, args.seconds)
        print(f"raw {model:<8} ({r['runtime']}): runtime single p50 {r['runtime_single_p50_ms']:.3f} ms, "
              f"{r['runtime_samples_per_s']:.0f} samples/s at batch {r['max_batch']}"
              + (f"; module alone single p50 {r['module_single_p50_ms']:.3f} ms, {r['module_samples_per_s']:.0f} "
                 "samples/s" if "module_samples_per_s" in r else ""), flush=True)
    report["batching_on"] = serve_and_measure(args.repository, models, args.device, args.seconds, "batching-on",
                                              args.log_dir, max_batch)
    with tempfile.TemporaryDirectory() as tmp:
        unbatched = unbatched_copy(args.repository, models, Path(tmp) / "repo")
        report["batching_off"] = serve_and_measure(unbatched, models, args.device, args.seconds, "batching-off",
                                                   args.log_dir, max_batch)
    for model in models:
        r, on, off = report["raw"][model], report["batching_on"][model], report["batching_off"][model]
        top = f"c{max_batch[model]}"
        reference = r.get("module_samples_per_s", r["runtime_samples_per_s"])
        report["ratios"][model] = ratios = {
            "throughput_batching_on_vs_raw_module": on[top]["rps"] / reference,
            "throughput_batching_off_vs_raw_module": off[top]["rps"] / reference,
            "c1_overhead_ms": on["c1"]["p50_ms"] - r["runtime_single_p50_ms"],
        }
        print(f"ratio {model:<8} service/raw module at c={max_batch[model]}: batching on "
              f"{ratios['throughput_batching_on_vs_raw_module']:.2f}, off "
              f"{ratios['throughput_batching_off_vs_raw_module']:.2f}; c=1 overhead "
              f"{ratios['c1_overhead_ms']:.2f} ms (one asyncio client process)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
