"""Export plan for the traffic forecaster: one ONNX graph `x (B, 12, N, C) -> y (B, 12, N, 1)` in mph.

The batch axis is dynamic; N (the sensor set) is fixed per model version and travels, with the scaler,
the feature list, the step length and the horizon, in the manifest's `preprocessing`, which is everything
`service/families/traffic` needs to turn readings + timestamps into `x`.

    python -m export traffic --checkpoint runs/traffic-quick/best.pt [--option max_batch_size=32]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.core import ExportPlan, GraphExport
from families.manifest import Batching
from families.traffic.preprocessing import STEP_SECONDS, Scaler, build_features
from service.families.traffic.quality import training_statistics
from training.traffic.train import load_checkpoint

TASK = "traffic-forecast"


def _samples(num_nodes: int, steps: int, scaler: Scaler, features: list[str], batch: int, seed: int) -> torch.Tensor:
    """Realistic parity inputs: speeds with ~10% zeros (missing) and 5-minute-grid timestamps."""
    rng = np.random.default_rng(seed)
    speeds = rng.uniform(10, 70, size=(batch, steps, num_nodes))
    speeds[rng.random(speeds.shape) < 0.1] = 0.0
    starts = np.datetime64("2012-03-01T00:00") + rng.integers(0, 7 * 288, batch) * np.timedelta64(STEP_SECONDS, "s")
    stamps = starts[:, None] + np.arange(steps) * np.timedelta64(STEP_SECONDS, "s")
    x = build_features(speeds, stamps, scaler, "time_of_day" in features, "day_of_week" in features)
    return torch.from_numpy(x)


def plan_from_checkpoint(checkpoint: Path, **options: Any) -> ExportPlan:
    model, ckpt = load_checkpoint(Path(checkpoint))
    cfg = model.cfg
    scaler = Scaler(**ckpt["scaler"])
    features = list(ckpt["features"])
    samples = [
        {"x": _samples(cfg.num_nodes, cfg.in_steps, scaler, features, batch, seed)}
        for seed, batch in enumerate((1, 3))
    ]
    graph = GraphExport(
        name="model",
        module=model,
        samples=samples,
        output_names=["y"],
        format=str(options.get("format", "onnx")),  # type: ignore[arg-type]
        atol=float(options.get("atol", 2e-3)),  # mph; outputs are O(60)
        rtol=float(options.get("rtol", 1e-4)),
    )
    batching = Batching(max_batch_size=16, max_queue_delay_ms=2.0, max_queue_size=256)
    preprocessing = {
        "sensor_ids": list(ckpt["sensor_ids"]),
        "scaler": {"mean": scaler.mean, "std": scaler.std},
        "features": features,
        "step_seconds": int(ckpt.get("step_seconds", STEP_SECONDS)),
        "input_steps": cfg.in_steps,
        "horizon": cfg.out_steps,
        "null_value": 0.0,
        "unit": "mph",
        "input_layout": "x: (batch, input_steps, num_sensors, len(features)) float32; speed z-scored",
        "output_layout": "y: (batch, horizon, num_sensors, 1) float32 mph",
    }
    missing = (ckpt.get("data") or {}).get("missing_fraction")
    if missing is not None:  # drift reference (service/quality/drift.py); older checkpoints lack it
        preprocessing["training_statistics"] = training_statistics(float(missing), scaler.mean, scaler.std)
    provenance = {
        "training_config": ckpt.get("config"),
        "model_config": ckpt.get("model_config"),
        "data": ckpt.get("data"),
        "metrics": ckpt.get("metrics"),
        "num_parameters": ckpt.get("num_parameters"),
        "best_epoch": ckpt.get("best_epoch"),
        "best_val_mae": ckpt.get("best_val_mae"),
        "checkpoint": str(checkpoint),
    }
    return ExportPlan(
        family="traffic", task=TASK, graphs=[graph], primary_graph="model", batching=batching,
        preprocessing=preprocessing, provenance=provenance,
    )
