"""Baseline windowed cross-attention cell vs the Phase-2 RWKV cell: time and peak memory of one
h_t = cell(x_t, h_prev) call as the context grid grows (2M = 192 channels, the small config's s3 cell).

CPU: peak memory is the peak RSS of a fresh process running only that call, minus the same process
before the call. GPU (--device cuda): torch.cuda.max_memory_allocated above the inputs, time per call
after warm-up with synchronisation. Run: .venv/bin/python benchmarks/imagecodec_cells.py [--sizes 16 32 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _child(kind: str, side: int, dim: int) -> None:
    import torch

    from training.imagecodec.layers import CrossAttentionCell, RWKVCell

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cell = CrossAttentionCell(dim, 8, 32) if kind == "attn" else RWKVCell(dim, 4)
    cell.eval()
    x = torch.randn(1, dim, side, side)
    h = torch.randn(1, dim, side, side)
    with torch.inference_mode():
        cell(x[:, :, :8, :8], h[:, :, :8, :8])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        for _ in range(3):
            cell(x, h)
        seconds = (time.perf_counter() - start) / 3
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_mib": (peak - before) / 1024}))


def _gpu(kind: str, side: int, dim: int) -> dict:
    import torch

    from training.imagecodec.layers import CrossAttentionCell, RWKVCell

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    cell = (CrossAttentionCell(dim, 8, 32) if kind == "attn" else RWKVCell(dim, 4)).cuda().eval()
    x = torch.randn(1, dim, side, side, device="cuda")
    h = torch.randn(1, dim, side, side, device="cuda")
    with torch.inference_mode():
        for _ in range(3):
            cell(x, h)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        for _ in range(10):
            cell(x, h)
        torch.cuda.synchronize()
    return {"seconds": (time.perf_counter() - start) / 10,
            "peak_mib": (torch.cuda.max_memory_allocated() - base) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 96])
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        print(f"{'grid':>8} {'tokens':>7} | {'attn ms':>8} {'attn MiB':>9} | {'rwkv ms':>8} {'rwkv MiB':>9}  (GPU)")
        for side in args.sizes:
            attn, rwkv = _gpu("attn", side, args.dim), _gpu("rwkv", side, args.dim)
            print(f"{side:>4}x{side:<3} {side * side:>7} | {attn['seconds'] * 1e3:8.2f} {attn['peak_mib']:9.1f} | "
                  f"{rwkv['seconds'] * 1e3:8.2f} {rwkv['peak_mib']:9.1f}")
        return
    if args.child:
        _child(args.child[0], int(args.child[1]), args.dim)
        return
    print(f"{'grid':>8} {'tokens':>7} | {'attn ms':>8} {'attn MiB':>9} | {'rwkv ms':>8} {'rwkv MiB':>9}")
    for side in args.sizes:
        row = {}
        for kind in ("attn", "rwkv"):
            out = subprocess.run([sys.executable, __file__, "--dim", str(args.dim), "--child", kind, str(side)],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            row[kind] = json.loads(out)
        attn, rwkv = row["attn"], row["rwkv"]
        print(f"{side:>4}x{side:<3} {side * side:>7} | {attn['seconds'] * 1e3:8.1f} {attn['peak_mib']:9.1f} | "
              f"{rwkv['seconds'] * 1e3:8.1f} {rwkv['peak_mib']:9.1f}")


if __name__ == "__main__":
    main()
