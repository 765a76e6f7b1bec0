"""What the adaptive loop filter costs and gains, side by side in one run: encode/decode wall time, bpp and
PSNR of 768x512 held-out photographs with the filter and with it switched off (`encode(..., loop_filter=False)`:
an empty filter substream), eager torch graphs of the shipped checkpoint.

    .venv/bin/python benchmarks/imagecodec_loopfilter.py --corpus /work/corpus [--images 3] [--threads 2]
    .venv/bin/python benchmarks/imagecodec_loopfilter.py --memory 2048   (the filter's own peak memory and time
        at 2048x2048: the encoder's fit-and-decide, the decoder's filtering; numpy reports to tracemalloc)
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from families.imagecodec import codec, loopfilter
from training.imagecodec.data import corpus_heldout
from training.imagecodec.default import SHIPPED
from training.imagecodec.evaluate import psnr
from training.imagecodec.networks import TorchNetworks, codec_model
from training.imagecodec.train import load_checkpoint


def _run(image: np.ndarray, nets, model, loop_filter: bool) -> tuple[float, float, float, float]:
    start = time.perf_counter()
    data, _ = codec.encode(image, nets, model, loop_filter=loop_filter)
    encoded = time.perf_counter()
    decoded, _ = codec.decode(data, nets, model)
    done = time.perf_counter()
    bpp = 8 * len(data) / (image.shape[0] * image.shape[1])
    return encoded - start, done - encoded, bpp, psnr(image, decoded)


def _peak(label: str, run) -> None:
    tracemalloc.start()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"{label}: peak {peak / 2**20:.0f} MB above the inputs, {seconds:.2f} s")


def memory(side: int) -> None:
    rng = np.random.default_rng(0)
    original = rng.random((3, side, side), dtype=np.float32)
    reconstruction = (0.8 * original + 0.05 * rng.random((3, side, side), dtype=np.float32)).astype(np.float32)
    coefficients = loopfilter.fit(reconstruction, original)
    _peak(f"encoder fit + decision {side}x{side}", lambda: loopfilter.choose(reconstruction, original))
    _peak(f"decoder filtering {side}x{side} (output included)", lambda: loopfilter.apply(reconstruction, coefficients))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, help="a built corpus (scripts/build_codec_corpus.py)")
    parser.add_argument("--memory", type=int, default=0, help="measure the filter alone at this square size")
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.memory:
        memory(args.memory)
        return
    if args.corpus is None:
        parser.error("--corpus is needed (or --memory)")
    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.checkpoint).model.eval()
    nets, model = TorchNetworks(loaded), codec_model(loaded, "imagecodec-q2")
    rows = {"filter": [], "off": []}
    for name, image in list(corpus_heldout(args.corpus).items())[: args.images]:
        for variant in ("off", "filter"):  # alternated per image, so drift in machine load hits both
            rows[variant].append(_run(image, nets, model, loop_filter=variant == "filter"))
        print(f"{name[:48]:48s} off {rows['off'][-1]}  filter {rows['filter'][-1]}")
    medians = {k: np.median(np.array(v), axis=0) for k, v in rows.items()}
    off, on = medians["off"], medians["filter"]
    print(f"median encode {off[0]:.3f} s -> {on[0]:.3f} s ({on[0] / off[0]:.2f}x), decode {off[1]:.3f} s -> "
          f"{on[1]:.3f} s ({on[1] / off[1]:.2f}x)")
    print(f"median bpp {off[2]:.4f} -> {on[2]:.4f}, PSNR {off[3]:.2f} -> {on[3]:.2f} dB")


if __name__ == "__main__":
    main()
