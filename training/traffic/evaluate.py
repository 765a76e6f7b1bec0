"""Evaluate a checkpoint (and the baselines) on a split; writes the metric table as JSON.

    python -m training.traffic.evaluate --checkpoint runs/traffic-quick/best.pt --out runs/traffic-quick/test.json
    python -m training.traffic.evaluate --checkpoint best.pt --data-dir data/METR-LA --split test --out table.json

Without --data-dir the data the checkpoint was trained on is used: its synthetic spec is regenerated
(deterministic) or its real-file directory is read again.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from training.traffic.data import SPLITS, prepare_data
from training.traffic.metrics import HORIZONS
from training.traffic.train import baseline_tables, evaluate_table, load_checkpoint


def format_table(tables: dict[str, dict[str, dict[str, float]]]) -> str:
    """Plain-text table: one row per method, MAE/RMSE/MAPE(%) per horizon."""
    columns = [*HORIZONS, "average"]
    header = f"{'method':<20}" + "".join(f"{c:>24}" for c in columns)
    lines = [header, f"{'':<20}" + "".join(f"{'MAE / RMSE / MAPE%':>24}" for _ in columns)]
    for name, table in tables.items():
        cells = [f"{table[c]['mae']:.2f} / {table[c]['rmse']:.2f} / {100 * table[c]['mape']:.1f}" for c in columns]
        lines.append(f"{name:<20}" + "".join(f"{cell:>24}" for cell in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, help="METR-LA-format directory (default: the training data)")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)

    checkpoint = load_checkpoint(args.checkpoint)
    data_cfg = checkpoint.config.data
    if args.data_dir is not None:
        data_cfg = replace(data_cfg, source="files", dir=str(args.data_dir))
    with tempfile.TemporaryDirectory() as scratch:
        data = prepare_data(data_cfg, Path(scratch))
    if data.sensor_ids != checkpoint.extras["sensor_ids"]:
        raise SystemExit("the data's sensor ids differ from the checkpoint's; the model is tied to its sensor set")
    if not np.isclose(data.scaler.mean, checkpoint.extras["scaler"]["mean"]):
        print("note: this data's training-split scaler differs from the checkpoint's; the checkpoint's is used")
    tables = {"model": evaluate_table(checkpoint.model, data, args.split, args.batch_size)}
    if not args.no_baselines:
        tables.update(baseline_tables(data, args.split))
    result = {
        "checkpoint": str(args.checkpoint), "split": args.split, "data": data.description(),
        "num_parameters": checkpoint.extras.get("num_parameters"), "metrics": tables,
        "horizon_indices": HORIZONS, "mape_unit": "fraction",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(format_table(tables))


if __name__ == "__main__":
    main()
