"""Encode/decode wall time of a 768x512 image with the codec procedure (real entropy coding): eager torch
graphs and ONNX Runtime graphs. Run: .venv/bin/python benchmarks/imagecodec_speed.py
[--checkpoint runs/imagecodec_gpu/q2/checkpoint.pt] [--phase phase2|baseline] [--threads 2] [--onnx]
Full HPCM-Base size on a GPU (untrained weights: the time does not depend on them):
    python benchmarks/imagecodec_speed.py --size base --device cuda
Before/after the chunked WKV scan (issue 15 item 5), both in one run (the doubling scan is swapped in for
"before", for eager torch and for the ONNX export): add --compare-wkv."""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

from families.imagecodec.codec import decode, encode
from training.imagecodec import layers
from training.imagecodec.config import hpcm_base_config, small_config
from training.imagecodec.data import heldout_photos
from training.imagecodec.model import ImageCodec
from training.imagecodec.networks import TorchNetworks, codec_model
from training.imagecodec.train import load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--phase", default="phase2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--onnx", action="store_true", help="also time the exported ONNX graphs")
    parser.add_argument("--size", choices=["small", "base"], default="small", help="untrained config size")
    parser.add_argument("--device", default="cpu", help="device of the eager graphs (cpu, cuda)")
    parser.add_argument("--compare-wkv", action="store_true", help="time the doubling WKV scan too (before/after)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        model = load_checkpoint(args.checkpoint).model
    else:
        torch.manual_seed(0)
        config = small_config if args.size == "small" else hpcm_base_config
        model = ImageCodec(config(phase=args.phase)).eval()
    photo = heldout_photos()["china"]
    image = np.ascontiguousarray(np.pad(photo, ((0, 512 - photo.shape[0]), (0, 768 - photo.shape[1]), (0, 0)),
                                        mode="reflect")[:512, :768])
    cm = codec_model(model, "bench")  # tables and weight hash from the CPU copy
    if args.device.startswith("cuda"):  # FP32 matmuls/convolutions (no TF32): the hints assume FP32 graphs
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    chunked = layers.bidirectional_wkv
    variants = {"doubling": layers.bidirectional_wkv_doubling, "chunked": chunked}
    if not args.compare_wkv:
        variants = {"": chunked}
    times: dict[tuple[str, str], tuple[float, float]] = {}
    for wkv, fn in variants.items():
        layers.bidirectional_wkv = fn  # read at call time (eager) and at export time (ONNX)
        try:
            for label, nets in _runs(model, args).items():
                encode(image[:64, :64], nets, cm)  # warm-up
                data, enc = encode(image, nets, cm)
                _, dec = decode(data, nets, cm)
                times[(label, wkv)] = (enc.seconds, dec.seconds)
                if torch.cuda.is_available():
                    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
                print(f"{label:>12} {wkv:>8} 768x512 {model.cfg.phase}: encode {enc.seconds:.2f} s, decode "
                      f"{dec.seconds:.2f} s, {8 * len(data) / (768 * 512):.3f} bpp, {enc.hints} scale hints, "
                      f"threads={args.threads}, {args.size} config, "
                      f"{sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
        finally:
            layers.bidirectional_wkv = chunked
    if args.compare_wkv:
        for label in dict.fromkeys(label for label, _ in times):
            (e0, d0), (e1, d1) = times[(label, "doubling")], times[(label, "chunked")]
            print(f"{label:>12} doubling/chunked: encode {e0:.2f}/{e1:.2f} s = {e0 / e1:.2f}x, "
                  f"decode {d0:.2f}/{d1:.2f} s = {d0 / d1:.2f}x")


def _runs(model: ImageCodec, args: argparse.Namespace) -> dict:
    runs = {f"torch-{args.device}": TorchNetworks(copy.deepcopy(model), args.device)}
    if args.onnx:
        from export.core import publish
        from export.families.imagecodec import plan_from_checkpoint
        from families.manifest import Manifest
        from service.runtimes import open_runtime

        tmp = Path(tempfile.mkdtemp())
        torch.save({"config": model.cfg.to_dict(), "state_dict": model.state_dict()}, tmp / "ck.pt")
        vdir = publish(plan_from_checkpoint(tmp / "ck.pt"), tmp / "repo", "bench")
        manifest = Manifest.read(vdir)
        rts = {n: open_runtime(vdir, g, "cpu", args.threads) for n, g in manifest.graphs.items()}
        runs["onnxruntime"] = lambda g, i: rts[g].run(i)
    return runs

if __name__ == "__main__":
    main()
