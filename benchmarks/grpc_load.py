"""Closed-loop gRPC load (grpc.aio): N concurrent callers of `ModelInfer` over one channel for a fixed time.

The request is serialised once and sent as bytes, and answers are counted, not parsed (identity
serialisers): per call the client does what wrk does for HTTP, so that the client's own CPU, on the same
machine as the server, biases the comparison as little as Python allows.

    python benchmarks/grpc_load.py 127.0.0.1:8001 tiny --shape 1,16 --concurrency 64 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.grpc.protos import grpc_service_pb2 as pb  # noqa: E402

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def infer_request(model: str, inputs: dict[str, np.ndarray]) -> bytes:
    """One serialised ModelInferRequest with raw (binary) input tensors."""
    request = pb.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        request.inputs.add(name=name, datatype={"float32": "FP32"}[array.dtype.name], shape=array.shape)
        request.raw_input_contents.append(np.ascontiguousarray(array, "<f4").tobytes())
    return request.SerializeToString()


async def run_load(address: str, body: bytes, concurrency: int, seconds: float, warmup_s: float = 0.5) -> dict:
    """{p50_ms, p99_ms, rps, errors} of `concurrency` callers sending `body` for `seconds` (after a warm-up)."""
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = channel.unary_unary(METHOD)  # bytes in, bytes out
        latencies: list[float] = []
        errors = 0
        measuring = False
        stop_at = time.perf_counter() + warmup_s + seconds

        async def caller() -> None:
            nonlocal errors
            while (now := time.perf_counter()) < stop_at:
                try:
                    await call(body, timeout=60)
                except grpc.aio.AioRpcError:
                    if measuring:
                        errors += 1
                    continue
                if measuring:
                    latencies.append(time.perf_counter() - now)

        async def clock() -> float:
            nonlocal measuring
            await asyncio.sleep(warmup_s)
            measuring = True
            started = time.perf_counter()
            await asyncio.sleep(seconds)
            measuring = False
            return time.perf_counter() - started

        elapsed, *_ = await asyncio.gather(clock(), *(caller() for _ in range(concurrency)))
    ms = np.asarray(latencies) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)) if ms.size else float("nan"),
            "p99_ms": float(np.percentile(ms, 99)) if ms.size else float("nan"),
            "rps": len(latencies) / elapsed, "errors": errors}


def grpc_load(address: str, body: bytes, concurrency: int, seconds: float) -> dict:
    """`run_load` on uvloop (what the service runs on), from synchronous code."""
    try:
        import uvloop

        return uvloop.run(run_load(address, body, concurrency, seconds))
    except ImportError:
        return asyncio.run(run_load(address, body, concurrency, seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("address")
    parser.add_argument("model")
    parser.add_argument("--input", default="x")
    parser.add_argument("--shape", default="1,16")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    shape = [int(d) for d in args.shape.split(",")]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    print(grpc_load(args.address, infer_request(args.model, {args.input: x}), args.concurrency, args.seconds))


if __name__ == "__main__":
    main()
