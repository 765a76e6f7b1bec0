"""Export plan of the tiny platform-test family."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from export.core import ExportPlan, GraphExport, parse_options
from families.manifest import Batching
from families.tiny.contract import Preprocessing
from training.tiny.train import load_checkpoint


class ExportOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["onnx", "torchscript"] = "onnx"


def plan_from_checkpoint(checkpoint: Path, options: Mapping[str, str] | None = None) -> ExportPlan:
    opts = parse_options(ExportOptions, options)
    loaded = load_checkpoint(checkpoint)
    generator = torch.Generator().manual_seed(0)
    samples = [{"x": torch.randn(batch, loaded.config.in_features, generator=generator)} for batch in (2, 5)]
    return ExportPlan(
        family="tiny",
        task="regression",
        graphs=[GraphExport(name="model", module=loaded.model, samples=samples, output_names=["y", "norm"],
                            format=opts.format)],
        batching=Batching(max_batch_size=8, max_queue_delay_ms=5, max_queue_size=64),
        preprocessing=Preprocessing(),
        provenance={"training_config": loaded.config.to_dict(), "metrics": loaded.extras["metrics"],
                    "data": "synthetic linear regression", "checkpoint": str(checkpoint)},
    )
