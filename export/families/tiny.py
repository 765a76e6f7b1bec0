"""Export plan of the tiny platform-test family."""

from __future__ import annotations

from pathlib import Path

import torch

from export.core import ExportPlan, GraphExport
from service.manifest import Batching
from training.tiny.model import TinyConfig, TinyRegressor


def plan_from_checkpoint(checkpoint: Path, format: str = "onnx", max_batch_size: str = "8",
                         max_queue_delay_ms: str = "5", max_queue_size: str = "64") -> ExportPlan:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config = TinyConfig(**state["config"])
    model = TinyRegressor(config).eval()
    model.load_state_dict(state["state_dict"])
    generator = torch.Generator().manual_seed(0)
    samples = [{"x": torch.randn(batch, config.in_features, generator=generator)} for batch in (2, 5)]
    return ExportPlan(
        family="tiny",
        task="regression",
        graphs=[GraphExport(name="model", module=model, samples=samples, output_names=["y", "norm"],
                            format=format)],  # type: ignore[arg-type]
        batching=Batching(max_batch_size=int(max_batch_size), max_queue_delay_ms=float(max_queue_delay_ms),
                          max_queue_size=int(max_queue_size)),
        provenance={"training_config": state["config"], "metrics": state.get("metrics", {}),
                    "data": "synthetic linear regression", "checkpoint": str(checkpoint)},
    )
