"""The default weld model: small config, trained on synthetic samples with fixed seeds, on CPU.

`build_default(workdir)` generates the synthetic dataset (12 classes x 16 train / 4 val / 8 test, a few
incomplete samples to exercise the skip policy), trains within a bounded time and returns `best.pt`, next
to which `gallery.npz` (the k-NN references) and `eval.json` (test k-NN metrics) are written; that is what
`export/families/weld.py:plan_from_checkpoint` reads.
"""

from __future__ import annotations

import time
from pathlib import Path

from training.threads import torch_threads
from training.weld.config import small
from training.weld.synthetic import generate
from training.weld.train import train

SEED = 0
EPOCHS = 30
TIME_BUDGET_S = 150.0  # safety net only: 30 fixed epochs normally end well before (results stay deterministic)


def build_default(workdir: Path) -> Path:
    workdir = Path(workdir)
    started = time.monotonic()
    data = workdir / "data"
    if not (data / "manifest.csv").is_file():
        generate(data, train=16, val=4, test=8, seed=SEED, incomplete=0.02)
    config = small()
    config.train.seed = SEED
    config.train.epochs = EPOCHS
    config.train.max_seconds = TIME_BUDGET_S
    with torch_threads(1):  # tiny tensors: one thread is faster than two fighting over shared cores
        result = train(config, workdir / "run", data)
    print(f"[weld] default model built in {time.monotonic() - started:.1f}s: {result.summary}")
    return result.best_checkpoint


if __name__ == "__main__":
    import sys

    print(build_default(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/weld_default")))
