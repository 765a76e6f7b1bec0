"""The image codec across devices and runtimes, and its speed (issue 27; run by benchmarks/gpu_check.sh).

    python benchmarks/gpu_codec.py roundtrip VERSION_DIR [--json OUT.json]
    python benchmarks/gpu_codec.py speed VERSION_DIR [--sizes 768x512,2048x2048] [--json OUT.json]

roundtrip: a stream encoded on one side decodes on the other to the encoder's latent symbols, bit for bit
(the scale-table index hints of families/imagecodec/codec.py), both ways: CPU + ONNX Runtime <-> CUDA +
TorchScript (the service's `auto` on each), and without a GPU CPU + ONNX Runtime <-> CPU + TorchScript.
speed: encode and decode time of one image per size on the GPU through TorchScript (CPU + ONNX Runtime
without a GPU); HPCM's paper reports ~81 ms per Kodak image (768x512) on a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def networks(version_dir: Path, device: str, runtime: str):
    """(networks, CodecModel, runtime names) of a published codec version on `device` with `runtime`."""
    from families.imagecodec.contract import TABLES_ASSET, Preprocessing
    from families.imagecodec.tables import PmfTables
    from families.manifest import Manifest
    from service.runtimes import open_runtime
    from service.runtimes.torchscript import apply_process_settings

    apply_process_settings(0)  # TF32 off on CUDA, as the service sets it at start-up (cuDNN's default is on)
    manifest = Manifest.read(version_dir)
    runtimes = {name: open_runtime(version_dir, spec, device, runtime=runtime)
                for name, spec in manifest.graphs.items()}
    pre = manifest.preprocessing_as(Preprocessing)
    model = pre.codec_model(manifest.name, PmfTables.from_bytes((version_dir / TABLES_ASSET).read_bytes()))
    names = sorted({r.name for r in runtimes.values()})
    return (lambda graph, inputs: runtimes[graph].run(inputs)), model, names


def photo_like(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth structure, edges and noise: a compressible image that is not trivially so."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(xx / (23 + 7 * c)) * np.cos(yy / (17 + 5 * c)) for c in range(3)], axis=-1) * 70 + 128
    base += 40 * ((xx // 64 + yy // 48) % 2)[..., None]
    return np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


def sides() -> list[tuple[str, str]]:
    import torch

    if torch.cuda.is_available():
        return [("cpu", "auto"), ("cuda", "auto")]  # what the service runs on each: ORT on CPU, torch on CUDA
    return [("cpu", "onnx"), ("cpu", "torch")]


def roundtrip(version_dir: Path) -> dict:
    from families.imagecodec.codec import decode, encode

    (dev_a, rt_a), (dev_b, rt_b) = sides()
    nets = {}
    for device, runtime in ((dev_a, rt_a), (dev_b, rt_b)):
        nets[(device, runtime)] = networks(version_dir, device, runtime)
    results = []
    for i, (h, w) in enumerate(((96, 128), (200, 312), (512, 768))):
        image = photo_like(h, w, i)
        for writer, reader in (((dev_a, rt_a), (dev_b, rt_b)), ((dev_b, rt_b), (dev_a, rt_a))):
            w_nets, model, w_names = nets[writer]
            r_nets, _, r_names = nets[reader]
            stream, enc = encode(image, w_nets, model)
            same, _ = decode(stream, w_nets, model)
            other, dec = decode(stream, r_nets, model)
            exact = bool(np.array_equal(dec.symbols, enc.symbols))
            diff = int(np.abs(other.astype(int) - same.astype(int)).max())
            row = {"size": f"{w}x{h}", "encoder": f"{writer[0]} {'/'.join(w_names)}",
                   "decoder": f"{reader[0]} {'/'.join(r_names)}", "stream_bytes": len(stream),
                   "latent_bit_exact": exact, "max_pixel_diff_vs_encoder_side_decode": diff,
                   "pixels_identical": diff == 0}
            results.append(row)
            print(f"codec round trip {row['size']}: encode {row['encoder']} -> decode {row['decoder']}: latent "
                  f"bit-exact {exact}, max pixel diff {diff}, {len(stream)} bytes", flush=True)
    return {"version": str(version_dir), "cases": results, "passed": all(r["latent_bit_exact"] for r in results)}


def speed(version_dir: Path, sizes: list[tuple[int, int]], repeats: int) -> dict:
    import torch

    from families.imagecodec.codec import decode, encode

    device, runtime = ("cuda", "auto") if torch.cuda.is_available() else ("cpu", "onnx")
    nets, model, names = networks(version_dir, device, runtime)
    encode(photo_like(128, 128, 0), nets, model)  # warm-up: kernels, allocator, autotuning
    rows = []
    for w, h in sizes:
        image = photo_like(h, w, 1)
        enc_s, dec_s = [], []
        for _ in range(repeats if w * h <= 1024 * 1024 else 1):
            t0 = time.perf_counter()
            stream, info = encode(image, nets, model)
            enc_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            decode(stream, nets, model)
            dec_s.append(time.perf_counter() - t0)
        row = {"size": f"{w}x{h}", "device": device, "runtime": "/".join(names), "encode_ms": 1000 * min(enc_s),
               "decode_ms": 1000 * min(dec_s), "bpp": info.bpp, "runs": len(enc_s)}
        rows.append(row)
        print(f"codec speed {row['size']} on {device} ({row['runtime']}): encode {row['encode_ms']:.0f} ms, "
              f"decode {row['decode_ms']:.0f} ms (best of {len(enc_s)}), {info.bpp:.3f} bpp", flush=True)
    return {"version": str(version_dir), "rows": rows, "anchor": "HPCM paper: ~81 ms per Kodak image on a GPU"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("roundtrip", "speed"))
    parser.add_argument("version_dir", type=Path)
    parser.add_argument("--sizes", default="768x512,2048x2048")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.action == "roundtrip":
        result = roundtrip(args.version_dir)
    else:
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s]
        result = speed(args.version_dir, sizes, args.repeats)  # type: ignore[arg-type]
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result.get("passed", True) else 1


if __name__ == "__main__":
    sys.exit(main())
