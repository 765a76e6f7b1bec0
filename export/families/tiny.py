"""Export plan of the tiny platform-test family."""

from __future__ import annotations

from pathlib import Path

import torch

from export.core import ExportPlan, GraphExport
from families.manifest import Batching
from training.tiny.model import TinyConfig, TinyRegressor


def plan_from_checkpoint(checkpoint: Path, format: str = "onnx") -> ExportPlan:
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
        batching=Batching(max_batch_size=8, max_queue_delay_ms=5, max_queue_size=64),
        provenance={"training_config": state["config"], "metrics": state.get("metrics", {}),
                    "data": "synthetic linear regression", "checkpoint": str(checkpoint)},
    )
