"""The service's default traffic version.

The shipped default is `models/traffic/traffic-research.pt`: the research preset (configs/research.yaml,
Phase 1 "fixed two-stage alternating", ~1.22M parameters) trained in a bounded background run on the 2-core
CPU on synthetic METR-LA (N=207, fixed seeds), its test table against the baselines inside. Reproduce with

    python -m training.traffic.train --config research --out runs/traffic-research   # ~70 min, resumable
    python -m training.traffic.default --ship runs/traffic-research/best.pt   # best.pt without optimizer state

Without the shipped file (or with `use_shipped=False`) the quick CPU fallback trains configs/default.yaml
(a 44k-parameter model) in a bounded 55 s, one thread: ~70 s for the call on the shared 2-core machine,
`python -m export.defaults --families traffic` (train + ONNX export + parity) 80 s end to end.

    python -m training.traffic.default runs/traffic-default
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from training.checkpoints import save_checkpoint
from training.traffic.config import load_config
from training.traffic.train import FAMILY, read_without_training_state, train

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "traffic" / "traffic-research.pt"


def build_default(workdir: Path, use_shipped: bool = True) -> Path:
    """The default model's checkpoint: the shipped research model, else a bounded CPU build in `workdir`."""
    if use_shipped and SHIPPED.exists():
        return SHIPPED
    return train(load_config("default"), workdir, log=None).best_checkpoint


def ship(checkpoint: Path, target: Path = SHIPPED) -> Path:
    """Write a trained best.pt as the shipped default: the weights and provenance, not the optimizer state."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(FAMILY, read_without_training_state(checkpoint), target)


def main() -> None:
    if sys.argv[1:2] == ["--ship"]:
        print(ship(Path(sys.argv[2])))
        return
    workdir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/traffic-default")
    started = time.perf_counter()
    checkpoint = build_default(workdir, use_shipped=False)
    summary = json.loads((workdir / "metrics.json").read_text())
    print(json.dumps({
        "checkpoint": str(checkpoint), "seconds": round(time.perf_counter() - started, 1),
        "epochs": summary["epochs"], "num_parameters": summary["num_parameters"],
        "test_average_mae": {k: round(v["average"]["mae"], 3) for k, v in summary["test"].items()},
    }, indent=2))


if __name__ == "__main__":
    main()
