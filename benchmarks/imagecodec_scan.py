"""WKV scan alone, before/after issue 15 item 5: the doubling scan (O(N log N); exported graphs keep all 17
levels) vs the chunked scan (O(N * L), L = 16 * ceil(1.7 * N**(1/3) / 16) from the shape; and fixed L = 16
and L = 64 variants, to check that choice), one
`bidirectional_wkv(k, v, w, u)` call at the token counts of the context grids of a 768x512 image (s1 12x8,
s2 24x16, s3 48x32) and of the service's largest image (2048x2048: 32x32, 64x64, 128x128), 2M = 192
channels (the small config). Eager torch and ONNX Runtime (one exported graph per variant, dynamic N).
Run: .venv/bin/python benchmarks/imagecodec_scan.py [--threads 2] [--dim 192] [--no-onnx]"""

from __future__ import annotations

import argparse
import io
import time

import torch
from torch import nn

from training.imagecodec import layers

GRIDS = (("768x512 s1", 12, 8), ("768x512 s2", 24, 16), ("768x512 s3", 48, 32),
         ("2048^2 s1", 32, 32), ("2048^2 s2", 64, 64), ("2048^2 s3", 128, 128))


def _fixed(chunk: int):
    def wkv(k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        a = torch.exp(k.clamp(-15.0, 15.0))
        both = torch.cat([a * v, a], dim=1)
        sums = layers._bidirectional_sums(both, -torch.cat([w, w]).unsqueeze(-1), chunk)
        c = v.shape[1]
        self_w = torch.exp(u).unsqueeze(-1)
        return (sums[:, :c] + self_w * a * v) / (sums[:, c:] + self_w * a)

    return wkv


VARIANTS = {"doubling": layers.bidirectional_wkv_doubling, "chunked": layers.bidirectional_wkv, "L16": _fixed(16),
            "L64": _fixed(64)}


class Scan(nn.Module):
    def __init__(self, fn, dim: int) -> None:
        super().__init__()
        self.fn = fn
        self.w = nn.Parameter(torch.linspace(2.0, 0.02, dim))
        self.u = nn.Parameter(torch.zeros(dim))

    def forward(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.fn(k, v, self.w, self.u)


def _time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-onnx", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mods = {name: Scan(fn, args.dim).eval() for name, fn in VARIANTS.items()}
    sessions, nodes = {}, {}
    if not args.no_onnx:
        import onnx
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        sample = (torch.randn(1, args.dim, 100), torch.randn(1, args.dim, 100))
        for name, mod in mods.items():
            buffer = io.BytesIO()
            torch.onnx.export(mod, sample, buffer, input_names=["k", "v"], output_names=["out"],
                              dynamic_axes={"k": {2: "N"}, "v": {2: "N"}, "out": {2: "N"}}, opset_version=18,
                              dynamo=False, do_constant_folding=True)
            nodes[name] = len(onnx.load_from_string(buffer.getvalue()).graph.node)
            sessions[name] = ort.InferenceSession(buffer.getvalue(), opts, providers=["CPUExecutionProvider"])
        print("ONNX nodes: " + ", ".join(f"{n} {c}" for n, c in nodes.items()))
    print(f"bidirectional_wkv, {args.dim} channels, threads={args.threads}, best of {args.repeats}; ms")
    head = f"{'grid':>11} {'tokens':>6} {'L':>4} | {'eager dbl':>9} {'chunked':>8} {'L16':>7} {'L64':>7} {'ratio':>6}"
    if sessions:
        head += f" | {'ORT dbl':>8} {'chunked':>8} {'L16':>7} {'L64':>7} {'ratio':>6}"
    print(head)
    for label, gh, gw in GRIDS:
        n = gh * gw
        k, v = torch.randn(1, args.dim, n), torch.randn(1, args.dim, n)
        with torch.inference_mode():
            eager = {name: _time(lambda m=mod, k=k, v=v: m(k, v), args.repeats) * 1e3 for name, mod in mods.items()}
        row = (f"{label:>11} {n:>6} {layers._chunk_len(n):>4} | {eager['doubling']:9.2f} {eager['chunked']:8.2f} "
               f"{eager['L16']:7.2f} {eager['L64']:7.2f} {eager['doubling'] / eager['chunked']:5.2f}x")
        if sessions:
            feeds = {"k": k.numpy(), "v": v.numpy()}
            ortt = {name: _time(lambda s=s, f=feeds: s.run(None, f), args.repeats) * 1e3
                    for name, s in sessions.items()}
            row += (f" | {ortt['doubling']:8.2f} {ortt['chunked']:8.2f} {ortt['L16']:7.2f} {ortt['L64']:7.2f} "
                    f"{ortt['doubling'] / ortt['chunked']:5.2f}x")
        print(row, flush=True)


if __name__ == "__main__":
    main()
