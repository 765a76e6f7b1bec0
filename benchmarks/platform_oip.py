"""Dynamic batching through `/v2/.../infer` on a compute-bound tiny-family model (1024-wide MLP, one
CPU thread per model), with the batcher on and off.

    python benchmarks/platform_oip.py [--url URL]   # default: starts a service on a fresh tiny repository

Prints p50/p99 latency at concurrency 1 and 64, throughput, and the mean executed batch size, with
max_batch_size 32 (batched) and 1 (unbatched).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from harness import export_tiny, metric_value, train_tiny  # noqa: E402
from loadgen import ServiceProcess, run_load  # noqa: E402


def body() -> dict:
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": x.ravel().tolist()}]}


def measure(url: str, model: str) -> None:
    payload = body()

    def request(client: httpx.AsyncClient):
        return client.post(f"/v2/models/{model}/infer", json=payload)

    for concurrency, total in ((1, 30), (64, 400)):
        result = run_load(url, request, concurrency, total)
        text = httpx.get(f"{url}/metrics").text
        labels = {"model": model, "queue": "model"}
        rows = metric_value(text, "inference_batch_size_sum", labels)
        batches = metric_value(text, "inference_batch_size_count", labels)
        print(f"{model:>10} {result.summary()}  (mean batch so far {rows / max(batches, 1):.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url")
    args = parser.parse_args()
    if args.url:
        measure(args.url, "tiny")
        return
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = train_tiny(Path(tmp) / "train", hidden=1024, depth=2, repeats=400, steps=0)
        repository = Path(tmp) / "repo"
        export_tiny(checkpoint, repository, "batched", max_batch_size="32", max_queue_delay_ms="2",
                    max_queue_size="512")
        export_tiny(checkpoint, repository, "unbatched", max_batch_size="1", max_queue_size="512")
        with ServiceProcess(repository, env={"SERVICE_CPU_THREADS": "1"}) as service:
            for model in ("batched", "unbatched"):
                measure(service.url, model)


if __name__ == "__main__":
    main()
