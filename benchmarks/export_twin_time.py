"""What the TorchScript twins add to an export (issue 27): per family, `publish` of the same plan with and
without twins, alternately, from the shipped checkpoints (weld: a checkpoint folder with gallery.npz).

    python benchmarks/export_twin_time.py [--weld runs/defaults/weld/run/best.pt] [--rounds 2]

Prints seconds per export (best of the rounds) and the difference; training time is not included (the
defaults' build time = training, where a family has no shipped checkpoint, + this).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weld", type=Path, default=ROOT / ".gpu/weld/best.pt")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--families", default="traffic,water,imagecodec,weld")
    args = parser.parse_args()
    from export.core import publish
    from families import registry

    checkpoints = {"traffic": ROOT / "models/traffic/traffic-research.pt",
                   "water": ROOT / "models/water/water-small.pt",
                   "imagecodec": ROOT / "models/imagecodec/imagecodec-q2.pt", "weld": args.weld}
    for family in args.families.split(","):
        if not checkpoints[family].is_file():
            print(f"{family}: no checkpoint at {checkpoints[family]}")
            continue
        exporter = registry.family(family).load("export")
        wall: dict[bool, list[float]] = {False: [], True: []}
        cpu: dict[bool, list[float]] = {False: [], True: []}
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.rounds):
                for twins in (False, True):
                    t0, c0 = time.perf_counter(), time.process_time()
                    plan = exporter.plan_from_checkpoint(checkpoints[family], {})
                    publish(plan, Path(tmp), family, torchscript=twins)
                    wall[twins].append(time.perf_counter() - t0)
                    cpu[twins].append(time.process_time() - c0)
        # CPU seconds of this process (all its threads) hold still on a machine others load; wall time does not.
        for label, series in (("wall", wall), ("cpu", cpu)):
            without, with_twins = min(series[False]), min(series[True])
            print(f"{family:<10} {label:<4} without twins {without:6.1f} s, with {with_twins:6.1f} s: "
                  f"+{with_twins - without:.1f} s (+{100 * (with_twins / without - 1):.0f} %)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
