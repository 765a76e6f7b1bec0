"""Weld gallery k-NN search time, side by side: exact torch (`GallerySnapshot.search`, as served without FAISS),
exact numpy (one matmul + argpartition), exact FAISS (`FaissIndex`, IndexFlatIP, as served above
SERVICE_WELD_FAISS_MIN) and, for reference, an approximate FAISS IVF index with its recall@k against the
exact neighbours. Cosine, k = 5, 512-d (the default model's embedding), clustered unit embeddings (12 class
centres + noise, like trained weld embeddings), median of repeats.

    python benchmarks/weld_knn.py [--refs 100000,1000000] [--threads 2] [--no-ivf] [--device cpu|cuda]

1M references take ~2 GB per copy (the torch snapshot holds two, FAISS one); peak ~8 GB.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from weld_common import ROOT  # noqa: F401 - puts the repository on sys.path

from families.weld import faiss_index
from families.weld.gallery import GallerySnapshot

DIM, K, CLASSES = 512, 5, 12


def timed(fn: Callable[[], object], repeats: int) -> float:
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


def clustered(n: int, rng: np.random.Generator, centres: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, chunk):
        rows = min(chunk, n - start)
        block = centres[rng.integers(0, CLASSES, rows)] + 0.8 * rng.standard_normal((rows, DIM), np.float32)
        out[start:start + rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def numpy_search(refs: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    dist = 1.0 - q @ refs.T
    part = np.argpartition(dist, k, axis=1)[:, :k]
    order = np.take_along_axis(dist, part, axis=1).argsort(axis=1)
    return np.take_along_axis(part, order, axis=1)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]))


Rows = dict[int, dict[str, str]]


def bench_torch(refs: np.ndarray, labels: np.ndarray, queries: dict[int, np.ndarray], device: str, repeats: int,
                rows: Rows) -> dict[int, np.ndarray]:
    """The served exact search; returns its neighbours per batch size (the reference for the others)."""
    ref_t = torch.from_numpy(refs).to(device)
    snapshot = GallerySnapshot(embeddings=ref_t, unit_t=ref_t.T.contiguous(), sq_norms=(ref_t * ref_t).sum(1),
                               labels=torch.from_numpy(labels).to(device), label_list=labels,
                               ids=np.arange(len(refs)).astype(str).astype(object), shipped=len(refs))
    exact = {}
    for b, q in queries.items():
        exact[b] = snapshot.search(q, K, "cosine", CLASSES).indices
        ms = timed(lambda q=q: snapshot.search(q, K, "cosine", CLASSES), repeats) * 1e3
        rows[b]["torch"] = f"{ms:.2f}"
    return exact


def bench_numpy(refs: np.ndarray, queries: dict[int, np.ndarray], exact: dict[int, np.ndarray], threads: int,
                repeats: int, rows: Rows) -> None:
    with threadpool_limits(threads):
        for b, q in queries.items():
            same = np.array_equal(numpy_search(refs, q, K), exact[b])
            ms = timed(lambda q=q: numpy_search(refs, q, K), repeats) * 1e3
            rows[b]["numpy"] = f"{ms:.2f}{'' if same else ' (neighbours differ!)'}"


def bench_faiss_flat(refs: np.ndarray, queries: dict[int, np.ndarray], exact: dict[int, np.ndarray], repeats: int,
                     rows: Rows) -> float:
    """The served FAISS index; returns its build seconds."""
    started = time.perf_counter()
    flat = faiss_index.FaissIndex(refs, "cosine")
    build = time.perf_counter() - started
    for b, q in queries.items():
        same = np.array_equal(flat.search(q, K)[1], exact[b])
        ms = timed(lambda q=q: flat.search(q, K), repeats) * 1e3
        rows[b]["faiss flat"] = f"{ms:.2f}{'' if same else ' (neighbours differ!)'}"
    return build


def bench_faiss_ivf(refs: np.ndarray, queries: dict[int, np.ndarray], exact: dict[int, np.ndarray], repeats: int,
                    rows: Rows, rng: np.random.Generator) -> tuple[int, float]:
    """Approximate IVF (not served): search time and recall@k at two nprobe; returns (nlist, build seconds)."""
    import faiss

    nlist = 1024 if len(refs) >= 500_000 else 256
    started = time.perf_counter()
    quantizer = faiss.IndexFlatIP(DIM)
    ivf = faiss.IndexIVFFlat(quantizer, DIM, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10
    ivf.train(refs[rng.choice(len(refs), min(len(refs), 64 * nlist), replace=False)])
    ivf.add(refs)
    build = time.perf_counter() - started
    for nprobe in (8, 32):
        ivf.nprobe = nprobe
        for b, q in queries.items():
            unit = np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), np.float32)
            found = ivf.search(unit, K)[1]
            ms = timed(lambda u=unit: ivf.search(u, K), repeats) * 1e3
            rows[b][f"ivf{nlist} nprobe {nprobe}"] = f"{ms:.2f} (recall@{K} {recall(found, exact[b]):.3f})"
    return nlist, build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="torch search device (FAISS and numpy: CPU)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--refs", default="100000,1000000")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--no-ivf", action="store_true", help="skip the approximate IVF index")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    has_faiss = faiss_index.available()
    if has_faiss:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLASSES, DIM)).astype(np.float32)
    print(f"torch device {args.device}, {args.threads} threads (torch, BLAS, FAISS OpenMP), cosine, k={K}, "
          f"{DIM}-d clustered unit embeddings, median ms per call"
          + ("" if has_faiss else "; faiss not installed: FAISS columns skipped"))
    for refs_n in (int(n) for n in args.refs.split(",")):
        refs = clustered(refs_n, rng, centres)
        labels = rng.integers(0, CLASSES, refs_n)
        queries = {b: clustered(b, rng, centres) for b in (int(x) for x in args.batches.split(","))}
        repeats = 20 if refs_n <= 200_000 else 7
        rows: Rows = {b: {} for b in queries}
        exact = bench_torch(refs, labels, queries, args.device, repeats, rows)
        bench_numpy(refs, queries, exact, args.threads, repeats, rows)
        if has_faiss:
            build = bench_faiss_flat(refs, queries, exact, repeats, rows)
            print(f"refs {refs_n:>8}: FAISS IndexFlatIP built in {build:.1f} s")
            if not args.no_ivf:
                nlist, build = bench_faiss_ivf(refs, queries, exact, repeats, rows, rng)
                print(f"refs {refs_n:>8}: FAISS IVF{nlist},Flat trained + filled in {build:.1f} s")
        for b, cells in rows.items():
            print(f"refs {refs_n:>8}  queries {b:>2}: " + " | ".join(f"{name} {v}" for name, v in cells.items()))


if __name__ == "__main__":
    main()
