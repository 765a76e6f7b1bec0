"""k-NN accuracy and macro-F1 of the small weld model on the synthetic TEST split, beside the same
architecture with untrained (initial) weights, plus the wall time of `build_default`.

    python benchmarks/weld_accuracy.py [--workdir runs/weld_bench] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import shutil

from weld_common import DEFAULT_WORKDIR, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=lambda p: __import__("pathlib").Path(p), default=DEFAULT_WORKDIR)
    parser.add_argument("--fresh", action="store_true", help="delete the work folder first (times build_default)")
    args = parser.parse_args()
    if args.fresh and args.workdir.exists():
        shutil.rmtree(args.workdir)
    checkpoint, _, seconds = prepare(args.workdir)
    evaluation = json.loads((checkpoint.parent / "eval.json").read_text())
    if seconds is not None:
        print(f"build_default: {seconds:.1f} s (data generation + decoding + training + evaluation)")
    for name in ("trained", "untrained_baseline"):
        m = evaluation[name]
        print(f"{name:>18}: k-NN k={m['k']} {m['metric']}: accuracy {m['accuracy']:.3f}  macro-F1 {m['f1_macro']:.3f}"
              f"  weighted-F1 {m['f1_weighted']:.3f}  (train refs {m['n_train']}, test {m['n_test']})")


if __name__ == "__main__":
    main()
