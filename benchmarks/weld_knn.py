"""Exact k-NN gallery search time at 10k and 100k references, 512-d, through `GallerySnapshot.search`
(one matmul + top-k on the device, exactly as served).

    python benchmarks/weld_knn.py [--device cpu|cuda] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from weld_common import ROOT  # noqa: F401 - puts the repository on sys.path

from families.weld.gallery import GallerySnapshot


def timed(fn, repeats: int) -> float:
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - started)
    return float(np.median(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, k=5, 512-d, median of repeats")
    for refs_n in (10_000, 100_000):
        refs = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((refs_n, 512), np.float32)), dim=1)
        labels = rng.integers(0, 12, refs_n)
        snapshot = GallerySnapshot(embeddings=refs.to(args.device), unit_t=refs.T.contiguous().to(args.device),
                                   sq_norms=(refs * refs).sum(1).to(args.device),
                                   labels=torch.from_numpy(labels).to(args.device), label_list=labels,
                                   ids=np.array([str(i) for i in range(refs_n)]), shipped=refs_n)
        for batch in (1, 16):
            queries = rng.standard_normal((batch, 512)).astype(np.float32)
            for metric in ("cosine", "euclidean"):
                seconds = timed(lambda q=queries, m=metric, g=snapshot: g.search(q, 5, m, 12), 20)
                print(f"refs {refs_n:>7}  queries {batch:>2}  {metric:<9}: {seconds * 1000:7.2f} ms per call, "
                      f"{seconds * 1000 / batch:6.3f} ms per query")


if __name__ == "__main__":
    main()
