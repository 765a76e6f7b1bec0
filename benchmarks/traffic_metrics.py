"""Metric table on the test split: last value, historical average, Phase 1 (fallback) and Phase 3 quick/deep.

    python benchmarks/traffic_metrics.py --out runs/traffic-bench                        # synthetic, N=207
    python benchmarks/traffic_metrics.py --data-dir data/METR-LA --device cuda --epochs 100 --out runs/metr
    python benchmarks/traffic_metrics.py --models phase1,quick --epochs 20 --time-budget-s 900 --device cuda

Each model is trained with its preset (configs/fallback.yaml = Phase 1, quick.yaml, deep.yaml), best
checkpoint by validation MAE, then scored with the same masked metrics as the baselines. Prints one row per
method (MAE / RMSE / MAPE at horizons 3, 6, 12 and averaged), parameter counts and seconds per epoch, and
writes the whole summary to <out>/benchmark.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.traffic.config import load_config  # noqa: E402
from training.traffic.data import prepare_data  # noqa: E402
from training.traffic.evaluate import format_table  # noqa: E402
from training.traffic.train import baseline_tables, fit  # noqa: E402

PRESETS = {"phase1": "fallback", "quick": "quick", "deep": "deep"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, help="real METR-LA/PEMS-BAY files (default: synthetic N=207)")
    parser.add_argument("--nodes", type=int, default=207)
    parser.add_argument("--days", type=int, default=35)
    parser.add_argument("--models", default="phase1,quick", help=f"comma list of {sorted(PRESETS)}")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--patience", type=int, default=15)
    parser.add_argument("--time-budget-s", type=float, help="per model: stop after the epoch crossing this")
    parser.add_argument("--max-batches-per-epoch", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast for training (CUDA only)")
    parser.add_argument("--cross-stage-scope", choices=["full", "node"], help="override the presets' scope")
    args = parser.parse_args()

    base = load_config("quick").data
    if args.data_dir is not None:
        base = replace(base, source="files", dir=str(args.data_dir))
    else:
        base = replace(base, nodes=args.nodes, days=args.days)
    args.out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(base, args.out)
    print(json.dumps(data.description()))
    tables = baseline_tables(data, "test")
    info: dict[str, dict] = {name: {"parameters": 0, "seconds_per_epoch": None} for name in tables}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        config = load_config(PRESETS[name])
        config.data = base
        config.train = replace(config.train, epochs=args.epochs, patience=args.patience, device=args.device,
                               threads=args.threads, time_budget_s=args.time_budget_s,
                               max_batches_per_epoch=args.max_batches_per_epoch, amp=args.amp)
        if args.cross_stage_scope:
            config.model.cross_stage_scope = args.cross_stage_scope
        started = time.perf_counter()
        summary = fit(config, args.out / name, data).summary
        tables[name] = summary["test"]["model"]
        info[name] = {"parameters": summary["num_parameters"], "seconds_per_epoch": summary["seconds_per_epoch"],
                      "epochs": summary["epochs"], "best_epoch": summary["best_epoch"],
                      "wall_seconds": time.perf_counter() - started, "config": config.to_dict()}
        # Partial results as soon as each model is done (long runs may be cut off).
        print(format_table({name: tables[name]}), flush=True)
        partial = {"data": data.description(), "device": args.device, "metrics": tables, "models": info}
        (args.out / "benchmark.json").write_text(json.dumps(partial, indent=2, default=str))
    print(format_table(tables))
    for name, row in info.items():
        spe = row["seconds_per_epoch"]
        print(f"{name:<20} params {row['parameters']:>10,}   s/epoch {spe if spe is None else round(spe, 1)}"
              f"   epochs {row.get('epochs')} (best {row.get('best_epoch')})")
    result = {"data": data.description(), "device": args.device, "metrics": tables, "models": info}
    (args.out / "benchmark.json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
