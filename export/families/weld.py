"""Export plan of the weld family: the embedding model (video, photos, audio, sensors -> 512-d) to ONNX,
with the k-NN gallery as an asset and the preprocessing parameters in the manifest
(`families.weld.contract.Preprocessing`).

Options (`--option key=value`, `ExportOptions`): gallery (path to gallery.npz; default: next to the
checkpoint), k, metric, format (onnx|torchscript), optional_modalities (comma list, or `none`; default: the
training config's `optional_modalities`). A version with optional modalities gets the presence-mask input
(`contract.MASK_INPUT`) in its graph and answers samples without them. Batching limits are applied by the
export CLI.

    python -m export weld --checkpoint runs/weld/best.pt [--option k=7 --option metric=euclidean]
    python -m export weld --checkpoint runs/weld/best.pt --option optional_modalities=audio,video
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from export.core import AssetFile, ExportError, ExportPlan, GraphExport, parse_options
from families.manifest import Batching
from families.weld.classes import CLASSES
from families.weld.contract import (
    EMBEDDING_OUTPUT,
    GALLERY_ASSET,
    GRAPH,
    MASK_INPUT,
    TASK,
    GallerySummary,
    Knn,
    Preprocessing,
)
from families.weld.ood import manifest_quality
from families.weld.preprocessing import MODALITIES
from training.weld.model import EmbeddingGraph, MaskedEmbeddingGraph
from training.weld.train import load_checkpoint


class ExportOptions(BaseModel):
    """`--option key=value` of a weld export."""

    model_config = ConfigDict(extra="forbid")

    gallery: Path | None = None
    k: int = Field(5, ge=1)
    metric: str | None = None  # default: the training config's k-NN metric
    format: Literal["onnx", "torchscript"] = "onnx"
    optional_modalities: list[str] | None = None  # None: the training config's

    @field_validator("optional_modalities", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [] if value.strip().lower() in ("", "none") else [m.strip() for m in value.split(",") if m.strip()]
        return value

    @field_validator("optional_modalities")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        unknown = sorted(set(value or ()) - set(MODALITIES))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; the weld modalities are {list(MODALITIES)}")
        return value


def _check_gallery(path: Path, embed_dim: int) -> tuple[GallerySummary, np.ndarray]:
    """The gallery's summary and embeddings; ExportError naming what is wrong with the file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            emb, labels, ids = data["embeddings"], data["labels"], data["ids"]
    except (OSError, KeyError, ValueError) as exc:
        raise ExportError(f"cannot read the gallery {path}: {exc}") from None
    if emb.ndim != 2 or emb.shape[1] != embed_dim or len(labels) != len(emb) or len(ids) != len(emb):
        raise ExportError(f"gallery {path}: embeddings {emb.shape}, {len(labels)} labels, {len(ids)} ids; "
                          f"expected (N, {embed_dim}) with N labels and ids")
    if len(emb) == 0:
        raise ExportError(f"gallery {path} is empty")
    if labels.min() < 0 or labels.max() >= len(CLASSES):
        raise ExportError(f"gallery {path}: labels outside 0..{len(CLASSES) - 1}")
    summary = GallerySummary(size=int(len(emb)),
                             per_class={CLASSES[c]: int((labels == c).sum()) for c in np.unique(labels)})
    return summary, emb


def _evaluation(checkpoint: Path) -> dict:
    """The k-NN test metrics training wrote next to the checkpoint (eval.json), for the provenance."""
    eval_path = checkpoint.parent / "eval.json"
    if not eval_path.is_file():
        return {}
    full = json.loads(eval_path.read_text())
    return {name: {key: full[name][key] for key in ("k", "metric", "n_train", "n_test", "accuracy", "f1_weighted",
                                                     "f1_macro")}
            for name in ("trained", "untrained_baseline") if name in full}


def plan_from_checkpoint(checkpoint: Path, options: Mapping[str, str] | None = None) -> ExportPlan:
    opts = parse_options(ExportOptions, options)
    checkpoint = Path(checkpoint)
    loaded = load_checkpoint(checkpoint)
    config = loaded.config
    gallery_path = opts.gallery or checkpoint.parent / GALLERY_ASSET
    if not gallery_path.is_file():
        raise ExportError(f"no k-NN gallery at {gallery_path}; training writes gallery.npz next to best.pt "
                          "(or pass --option gallery=PATH)")
    summary, embeddings = _check_gallery(gallery_path, config.model.embed_dim)
    try:
        knn = Knn(k=opts.k, metric=opts.metric or config.train.knn_metric)
    except ValueError as exc:
        raise ExportError(str(exc)) from None

    optional = opts.optional_modalities
    if optional is None:
        optional = list(config.train.optional_modalities)
    optional = [m for m in MODALITIES if m in optional]
    shapes = config.preprocess.shapes()
    generator = torch.Generator().manual_seed(0)
    samples = [{m: torch.randn(batch, *shapes[m], generator=generator) for m in MODALITIES} for batch in (1, 3)]
    module = EmbeddingGraph(loaded.model)
    if optional:  # parity also over absent modalities: each optional one absent in a row of the batch of 3
        module = MaskedEmbeddingGraph(loaded.model)
        for sample in samples:
            mask = torch.ones(len(sample["video"]), len(MODALITIES))
            for row, modality in enumerate(optional[:len(mask) - 1]):
                mask[row + 1, MODALITIES.index(modality)] = 0.0
            sample[MASK_INPUT] = mask
    graph = GraphExport(name=GRAPH, module=module.eval(), samples=samples,
                        output_names=[EMBEDDING_OUTPUT], format=opts.format, atol=1e-4, rtol=1e-3)
    pre = Preprocessing(params=config.preprocess, inputs={m: list(shapes[m]) for m in MODALITIES},
                        optional_modalities=optional, mask_input=MASK_INPUT if optional else None, knn=knn,
                        gallery=summary, quality=manifest_quality(embeddings, knn.metric))
    return ExportPlan(
        family="weld",
        task=TASK,
        graphs=[graph],
        batching=Batching(max_batch_size=16, max_queue_delay_ms=5, max_queue_size=128),
        preprocessing=pre,
        labels=list(CLASSES),
        assets={GALLERY_ASSET: AssetFile(gallery_path.read_bytes(), "k-NN references: embeddings (N, D) float32, "
                                                           "labels (N,) int64, ids (N,) str")},
        provenance={"training_config": config.to_dict(), "metrics": _evaluation(checkpoint),
                    "checkpoint": str(checkpoint), "epoch": loaded.extras.get("epoch"),
                    "val_supcon": loaded.extras.get("val_supcon"),
                    "data": "synthetic weld samples in the Intel robotic welding dataset layout "
                            "(training/weld/synthetic.py)" if config.name == "small" else "see training_config"},
    )
