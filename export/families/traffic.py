"""Export plan for the traffic forecaster: one ONNX graph `x (B, 12, N, C) -> y (B, 12, N, 1)` in mph.

The batch axis is dynamic; N (the sensor set) is fixed per model version and travels, with the scaler,
the feature list, the step length and the horizon, in the manifest's `preprocessing`
(`families.traffic.contract.Preprocessing`), which is everything `service/families/traffic` needs to turn
readings + timestamps into `x`.

    python -m export traffic --checkpoint runs/traffic-quick/best.pt [--option max_batch_size=32]
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from export.core import ExportPlan, GraphExport, parse_options
from families.manifest import Batching
from families.traffic.contract import GRAPH, INPUT, OUTPUT, TASK, Preprocessing, training_statistics
from families.traffic.preprocessing import STEP_SECONDS, Scaler, build_features
from training.traffic.train import load_checkpoint


class ExportOptions(BaseModel):
    """`--option key=value` of a traffic export."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["onnx", "torchscript"] = "onnx"
    atol: float = 2e-3  # mph; outputs are O(60)
    rtol: float = 1e-4


def _samples(num_nodes: int, steps: int, pre: Preprocessing, batch: int, seed: int) -> torch.Tensor:
    """Realistic parity inputs: speeds with ~10% zeros (missing) and 5-minute-grid timestamps."""
    rng = np.random.default_rng(seed)
    speeds = rng.uniform(10, 70, size=(batch, steps, num_nodes))
    speeds[rng.random(speeds.shape) < 0.1] = 0.0
    starts = np.datetime64("2012-03-01T00:00") + rng.integers(0, 7 * 288, batch) * np.timedelta64(STEP_SECONDS, "s")
    stamps = starts[:, None] + np.arange(steps) * np.timedelta64(STEP_SECONDS, "s")
    x = build_features(speeds, stamps, pre.scaler, pre.use_time_of_day, pre.use_day_of_week)
    return torch.from_numpy(x)


def _mae_ratio(metrics: Mapping[str, Any] | None) -> float | None:
    """The model's average test MAE over the last-value baseline's, from the checkpoint's test table."""
    tables = (metrics or {}).get("test") or {}
    if "model" not in tables or "last_value" not in tables:
        return None
    return round(tables["model"]["average"]["mae"] / tables["last_value"]["average"]["mae"], 4)


def plan_from_checkpoint(checkpoint: Path, options: Mapping[str, str] | None = None) -> ExportPlan:
    opts = parse_options(ExportOptions, options)
    loaded = load_checkpoint(Path(checkpoint))
    model, extras = loaded.model, loaded.extras
    cfg = model.cfg
    scaler = Scaler(**extras["scaler"])
    missing = (extras.get("data") or {}).get("missing_fraction")
    pre = Preprocessing(
        sensor_ids=list(extras["sensor_ids"]), scaler=scaler, features=list(extras["features"]),
        step_seconds=int(extras.get("step_seconds", STEP_SECONDS)), input_steps=cfg.in_steps, horizon=cfg.out_steps,
        # Drift reference (service/quality/drift.py); older checkpoints lack the data summary it needs.
        training_statistics=(None if missing is None
                             else training_statistics(float(missing), scaler.mean, scaler.std)),
    )
    samples = [{INPUT: _samples(cfg.num_nodes, cfg.in_steps, pre, batch, seed)} for seed, batch in enumerate((1, 3))]
    graph = GraphExport(name=GRAPH, module=model, samples=samples, output_names=[OUTPUT], format=opts.format,
                        atol=opts.atol, rtol=opts.rtol)
    batching = Batching(max_batch_size=16, max_queue_delay_ms=2.0, max_queue_size=256)
    provenance = {
        "training_config": extras.get("config"),
        "test_mae_vs_last_value": _mae_ratio(extras.get("metrics")),
        "model_config": extras.get("model_config"),
        "data": extras.get("data"),
        "metrics": extras.get("metrics"),
        "num_parameters": extras.get("num_parameters"),
        "best_epoch": extras.get("best_epoch"),
        "best_val_mae": extras.get("best_val_mae"),
        "checkpoint": str(checkpoint),
    }
    return ExportPlan(family="traffic", task=TASK, graphs=[graph], primary_graph=GRAPH, batching=batching,
                      preprocessing=pre, provenance=provenance)
