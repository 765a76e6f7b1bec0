"""Export plan for the HPCM image codec: every network the codec procedure runs is its own graph
(g_a, h_a, h_s, g_s, ctx_init, step_2 .. step_11), with dynamic height/width, plus the integer pmf
tables as an asset. The procedure itself lives in families/imagecodec/codec.py, the manifest section it
writes in families/imagecodec/contract.py.

    python -m export imagecodec --checkpoint runs/ic/q3/checkpoint.pt [--name imagecodec-q3]
        [--option format=onnx|torchscript] [--option max_pixels=N] [--option max_aspect=N] [--option name=M]

ONNX and TorchScript versions of one checkpoint share the model hash (a hash of the weights), so a
stream written by one decodes on the other (see the codec module for why that is exact on the latent).
Versions are published with the version policy `all`: stored streams outlive model updates, since the
service loads the version whose hash a stream carries.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from export.core import AssetFile, ExportPlan, GraphExport, parse_options
from families.imagecodec.codec import GRAPH_INPUTS, GRAPH_OUTPUTS, MAX_ASPECT, PAD_MULTIPLE, encode
from families.imagecodec.contract import PRIMARY_GRAPH, TABLES_ASSET, Preprocessing
from families.manifest import Batching, VersionPolicy
from training.imagecodec.model import count_parameters, state_hash
from training.imagecodec.networks import TorchNetworks, build_tables, codec_model, graph_modules
from training.imagecodec.train import load_checkpoint

TASK = "image-compression"
SAMPLE_SIZES = ((64, 128), (128, 64))  # two image sizes -> parity checks the dynamic spatial axes


class _Recorder(TorchNetworks):
    """Runs the eager graphs and keeps the first inputs each graph sees (realistic parity samples)."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.seen: dict[str, dict[str, np.ndarray]] = {}

    def __call__(self, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.seen.setdefault(graph, {k: v.copy() for k, v in inputs.items()})
        return super().__call__(graph, inputs)


def _samples(model, name: str) -> dict[str, list[dict[str, torch.Tensor]]]:
    rng = np.random.default_rng(0)
    samples: dict[str, list[dict[str, torch.Tensor]]] = {g: [] for g in GRAPH_INPUTS}
    cm = codec_model(model, name)
    for h, w in SAMPLE_SIZES:
        image = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        recorder = _Recorder(model)
        data, _ = encode(image, recorder, cm)
        for graph, inputs in recorder.seen.items():
            samples[graph].append({k: torch.from_numpy(v) for k, v in inputs.items()})
        y_hat = recorder("g_a", {"x": recorder.seen["g_a"]["x"]})["y"]
        samples["g_s"].append({"y_hat": torch.from_numpy(np.round(y_hat))})
    return samples


class ExportOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["onnx", "torchscript"] = "onnx"
    name: str = "imagecodec"  # the model name the parity samples' streams carry
    max_pixels: int = Field(2048 * 2048, gt=0)  # padded area; ~40 s of CPU coding at the limit
    max_aspect: int = Field(MAX_ASPECT, gt=0)  # padded long side / short side


def plan_from_checkpoint(checkpoint: Path, options: Mapping[str, str] | None = None) -> ExportPlan:
    opts = parse_options(ExportOptions, options)
    fmt = opts.format
    loaded = load_checkpoint(Path(checkpoint))
    model, extras = loaded.model, loaded.extras
    tables = build_tables(model)
    samples = _samples(model, opts.name)
    graphs = []
    for graph, module in graph_modules(model).items():
        axes = {}
        for tensor in GRAPH_INPUTS[graph] + GRAPH_OUTPUTS[graph]:
            axes[tensor] = {2: f"{tensor}_height", 3: f"{tensor}_width"}
        graphs.append(GraphExport(
            name=graph, module=module, samples=samples[graph], output_names=list(GRAPH_OUTPUTS[graph]),
            format=fmt, batchable=False, dynamic_axes=axes, atol=2e-4, rtol=1e-3,
        ))
    cfg = model.cfg
    return ExportPlan(
        family="imagecodec", task=TASK, graphs=graphs, primary_graph=PRIMARY_GRAPH,
        batching=Batching(max_batch_size=1, max_queue_delay_ms=0.0, max_queue_size=16, default_timeout_ms=60_000),
        version_policy=VersionPolicy(kind="all"),  # every stream ever written stays decodable
        preprocessing=Preprocessing(
            pad_multiple=PAD_MULTIPLE, M=cfg.M, N=cfg.N, max_pixels=opts.max_pixels, max_aspect=opts.max_aspect,
            model_hash=state_hash(model)[:16], quality=extras["quality"], lmbda=extras["lambda"],
        ),
        assets={TABLES_ASSET: AssetFile(tables.to_bytes(), "integer pmf tables (y per scale index, z per channel)")},
        provenance={"training": extras.get("provenance", {}), "config": cfg.to_dict(),
                    "parameters": count_parameters(model), "format": fmt},
    )
