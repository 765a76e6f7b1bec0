"""The service's default traffic version: configs/default.yaml on synthetic METR-LA (N=207), CPU, fixed seeds.

Training stops at the batch that crosses `train.time_budget_s` (55 s, one thread); with data generation
(~3 s), validation and the bounded test evaluation the call took 70 s on the shared 2-core machine, and
`python -m export.defaults --families traffic` (train + ONNX export + parity) 80 s end to end.

    python -m training.traffic.default runs/traffic-default
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from training.traffic.config import load_config
from training.traffic.train import train


def build_default(workdir: Path) -> Path:
    """Train the default model into `workdir` and return its best checkpoint."""
    return train(load_config("default"), workdir, log=None).best_checkpoint


def main() -> None:
    workdir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/traffic-default")
    started = time.perf_counter()
    checkpoint = build_default(workdir)
    summary = json.loads((workdir / "metrics.json").read_text())
    print(json.dumps({
        "checkpoint": str(checkpoint), "seconds": round(time.perf_counter() - started, 1),
        "epochs": summary["epochs"], "num_parameters": summary["num_parameters"],
        "test_average_mae": {k: round(v["average"]["mae"], 3) for k, v in summary["test"].items()},
    }, indent=2))


if __name__ == "__main__":
    main()
