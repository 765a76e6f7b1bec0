"""Per-sample cost of the weld pipeline on the default (small) model: decoding + preprocessing of the real
files, and the exported embedding graph (ONNX Runtime, CPU) at batch 1 and 16.

    python benchmarks/weld_embedding.py [--workdir runs/weld_bench] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from weld_common import DEFAULT_WORKDIR, prepare

from families.manifest import Manifest
from families.weld.preprocessing import MODALITIES, PreprocessParams, SampleFiles, preprocess_sample
from service.runtimes import open_runtime


def median_seconds(fn, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return float(np.median(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    checkpoint, repository, _ = prepare(args.workdir)
    version_dir = repository / "weld" / "1"
    manifest = Manifest.read(version_dir)
    params = PreprocessParams.from_dict(manifest.preprocessing["params"])
    from training.weld.data import read_manifest

    record = [r for r in read_manifest(args.workdir / "data") if r.split == "TEST"][0]
    files = SampleFiles(video=record.video_path().read_bytes(), photos=[p.read_bytes() for p in record.photo_paths()],
                        audio=record.audio_path().read_bytes(), sensors=record.sensor_path().read_bytes())
    decode = median_seconds(lambda: preprocess_sample(files, params), 20)
    print(f"decode + preprocess (avi {params.video_frames} frames, 5 jpg, flac, csv): {decode * 1000:.1f} ms/sample")
    tensors = preprocess_sample(files, params)
    runtime = open_runtime(version_dir, manifest.primary, "cpu", args.threads)
    for batch in (1, 16):
        inputs = {m: np.repeat(tensors[m][None], batch, axis=0) for m in MODALITIES}
        seconds = median_seconds(lambda x=inputs: runtime.run(x), 20)
        print(f"embedding ({runtime.name}, {args.threads} threads) batch {batch:>2}: {seconds * 1000:.2f} ms/batch, "
              f"{seconds * 1000 / batch:.2f} ms/sample")


if __name__ == "__main__":
    main()
