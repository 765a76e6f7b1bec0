"""Export plan of the weld family: the embedding model (video, photos, audio, sensors -> 512-d) to ONNX,
with the k-NN gallery and the preprocessing parameters as assets of the version.

Options (strings, from `--option key=value`): gallery (path to gallery.npz; default: next to the
checkpoint), k, metric, format (onnx|torchscript). Batching limits are applied by the export CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from export.core import AssetFile, ExportError, ExportPlan, GraphExport
from families.manifest import Batching
from families.weld.classes import CLASSES
from families.weld.knn import METRICS
from families.weld.preprocessing import MODALITIES
from service.families.weld.quality import manifest_quality
from training.weld.evaluate import load_checkpoint
from training.weld.model import EmbeddingGraph

GALLERY_ASSET = "gallery.npz"


def _check_gallery(path: Path, embed_dim: int) -> dict:
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
    return {"size": int(len(emb)), "per_class": {CLASSES[c]: int((labels == c).sum()) for c in np.unique(labels)}}


def _gallery_quality(path: Path, metric: str) -> dict:
    """The OOD threshold (leave-one-out p99 nearest distance) the service compares live samples with."""
    with np.load(path, allow_pickle=False) as data:
        return manifest_quality(data["embeddings"], metric)


def plan_from_checkpoint(checkpoint: Path, gallery: str | None = None, k: str = "5", metric: str | None = None,
                         format: str = "onnx") -> ExportPlan:
    checkpoint = Path(checkpoint)
    model, config, state = load_checkpoint(checkpoint)
    gallery_path = Path(gallery) if gallery else checkpoint.parent / GALLERY_ASSET
    if not gallery_path.is_file():
        raise ExportError(f"no k-NN gallery at {gallery_path}; training writes gallery.npz next to best.pt "
                          "(or pass --option gallery=PATH)")
    gallery_info = _check_gallery(gallery_path, config.model.embed_dim)
    metric = metric or config.train.knn_metric
    if metric not in METRICS:
        raise ExportError(f"metric must be one of {METRICS}, got {metric!r}")

    shapes = config.preprocess.shapes()
    generator = torch.Generator().manual_seed(0)
    samples = [{m: torch.randn(batch, *shapes[m], generator=generator) for m in MODALITIES} for batch in (1, 3)]
    graph = GraphExport(name="model", module=EmbeddingGraph(model).eval(), samples=samples,
                        output_names=["embedding"], format=format, atol=1e-4, rtol=1e-3)  # type: ignore[arg-type]

    evaluation = {}
    eval_path = checkpoint.parent / "eval.json"
    if eval_path.is_file():
        full = json.loads(eval_path.read_text())
        evaluation = {name: {key: full[name][key] for key in ("k", "metric", "n_train", "n_test", "accuracy",
                                                               "f1_weighted", "f1_macro")}
                      for name in ("trained", "untrained_baseline") if name in full}
    return ExportPlan(
        family="weld",
        task="classification",
        graphs=[graph],
        batching=Batching(max_batch_size=16, max_queue_delay_ms=5, max_queue_size=128),
        preprocessing={
            "params": config.preprocess.to_dict(),
            "inputs": {m: list(shapes[m]) for m in MODALITIES},
            "optional_modalities": [],
            "knn": {"k": int(k), "metric": metric, "gallery": GALLERY_ASSET},
            "gallery": gallery_info,
            "quality": _gallery_quality(gallery_path, metric),
        },
        labels=list(CLASSES),
        assets={GALLERY_ASSET: AssetFile(gallery_path.read_bytes(), "k-NN references: embeddings (N, D) float32, "
                                                           "labels (N,) int64, ids (N,) str")},
        provenance={"training_config": config.to_dict(), "metrics": evaluation, "checkpoint": str(checkpoint),
                    "epoch": state.get("epoch"), "val_supcon": state.get("val_supcon"),
                    "data": "synthetic weld samples in the Intel robotic welding dataset layout "
                            "(training/weld/synthetic.py)" if config.name == "small" else "see training_config"},
    )
