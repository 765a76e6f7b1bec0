"""Export plan of the water family: one graph taking full-size normalised fields plus boolean masks.

Inputs (B = batch): precip/soil/temp [B, T, H, W] FP32, evap/riverflow [B, T_v] FP32, static [B, 11] FP32
(all normalised with the manifest's `preprocessing.stats`; hidden values are ignored, send 0 -- unless the
manifest's `preprocessing.prior_fill` is true: then every value of a hidden patch / step must hold
`families.water.preprocessing.gap_prior` of the visible values, which the decoders correct), and
precip_mask/soil_mask/temp_mask [B, T, H/p, W/p] BOOL, evap_mask/riverflow_mask [B, T_v] BOOL (True =
hidden patch / step). Outputs: the five completed fields, normalised, visible tokens copied from the input.
Hidden tokens are removed by attention masks inside the graph, so every masking pattern and visible count
runs through the same graph; parity is checked on several patterns and batch sizes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from export.core import ExportPlan, GraphExport, parse_options
from families.manifest import Batching
from families.water.contract import (
    MODEL_GRAPH,
    STATIC_INPUT,
    Grid,
    Normalisation,
    Preprocessing,
    mask_input,
    missing_share_statistics,
    output_name,
)
from families.water.preprocessing import IMAGE_MODALITIES, MODALITIES, STATIC_NAMES, UNITS, VECTOR_MODALITIES
from training.water.config import WaterModelConfig
from training.water.model import DenseReconstructor
from training.water.train import load_checkpoint


class ExportOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["onnx", "torchscript"] = "onnx"


def _masks(cfg: WaterModelConfig, batch: int, pattern: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    hp, wp = cfg.grid_patches
    shapes = {m: (batch, cfg.frames, hp, wp) if m in IMAGE_MODALITIES else (batch, cfg.series_len) for m in MODALITIES}
    if pattern == "random":
        return {m: torch.rand(s, generator=generator) < 0.75 for m, s in shapes.items()}
    if pattern == "none":
        return {m: torch.zeros(s, dtype=torch.bool) for m, s in shapes.items()}
    # "gaps": a block of days in precip, a region in soil, all of temp, a mix of counts per row in the series.
    masks = {m: torch.zeros(s, dtype=torch.bool) for m, s in shapes.items()}
    masks["precip"][:, 1:3] = True
    masks["soil"][:, :, : max(1, hp // 2), : max(1, wp // 2)] = True
    masks["temp"][:] = True
    for row in range(batch):
        masks["evap"][row, : (row * 7) % cfg.series_len] = True
        masks["riverflow"][row, (row * 3) % cfg.series_len:] = True
    return masks


def _sample(cfg: WaterModelConfig, batch: int, pattern: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    sample = {}
    for m in MODALITIES:
        shape = (batch, cfg.frames, cfg.height, cfg.width) if m in IMAGE_MODALITIES else (batch, cfg.series_len)
        sample[m] = torch.randn(shape, generator=generator)
    sample[STATIC_INPUT] = torch.randn(batch, cfg.n_static, generator=generator)
    sample.update({mask_input(m): v for m, v in _masks(cfg, batch, pattern, generator).items()})
    return sample


def _preprocessing(cfg: WaterModelConfig, stats: Normalisation, missing: dict[str, float] | None) -> Preprocessing:
    """What the service needs to validate requests and (de)normalise; with the training split's missing share
    per modality, the drift reference too (service/families/water/quality.py). Older checkpoints lack it: no drift
    series for them."""
    return Preprocessing(
        grid=Grid(height=cfg.height, width=cfg.width, patch=cfg.patch, frames=cfg.frames, series_len=cfg.series_len,
                  n_static=cfg.n_static),
        image_modalities=list(IMAGE_MODALITIES),
        vector_modalities=list(VECTOR_MODALITIES),
        static_names=list(STATIC_NAMES),
        units=UNITS,
        stats=stats,
        prior_fill=cfg.prior_fill,
        training_statistics=missing_share_statistics(missing) if missing else None,
    )


def plan_from_checkpoint(checkpoint: Path, options: Mapping[str, str] | None = None) -> ExportPlan:
    opts = parse_options(ExportOptions, options)
    loaded = load_checkpoint(Path(checkpoint))
    cfg = loaded.config
    generator = torch.Generator().manual_seed(0)
    samples = [_sample(cfg, b, p, generator) for b, p in ((2, "random"), (1, "none"), (3, "gaps"), (5, "random"))]
    graph = GraphExport(name=MODEL_GRAPH, module=DenseReconstructor(loaded.model).eval(), samples=samples,
                        output_names=[output_name(m) for m in MODALITIES], format=opts.format)
    metrics = loaded.extras["metrics"]
    return ExportPlan(
        family="water",
        task="reconstruct",
        graphs=[graph],
        primary_graph=MODEL_GRAPH,
        batching=Batching(max_batch_size=8, max_queue_delay_ms=5, max_queue_size=128),
        preprocessing=_preprocessing(cfg, Normalisation.of(loaded.extras["stats"]), loaded.extras["missing_fraction"]),
        provenance={
            "training_config": cfg.to_dict(),
            "metrics": {k: v for k, v in metrics.items() if k != "history"},
            "evaluation": loaded.extras["evaluation"],
            "data": loaded.extras["data"],
            "checkpoint": str(checkpoint),
        },
    )
