"""k-NN evaluation: fit on TRAIN embeddings, score on TEST embeddings (never the same samples).

CLI: python -m training.weld.evaluate --checkpoint runs/weld/best.pt --data DATA [--k 5]
     [--metric cosine|euclidean|manhattan] [--untrained] [--out eval.json]
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
)

from families.weld.classes import CLASSES
from families.weld.knn import METRICS, knn_search
from families.weld.preprocessing import MODALITIES
from training.weld.checkpoint import load_checkpoint
from training.weld.data import WeldDataset, check_session_leakage, collate, read_manifest, split_records
from training.weld.model import WeldEmbeddingModel, build_model


@torch.no_grad()
def embed(model: WeldEmbeddingModel, dataset: WeldDataset, batch_size: int = 32,
          device: str = "cpu") -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        out.append(model(*[batch[m].to(device) for m in MODALITIES], mask=batch["mask"].to(device))
                   .float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.embed_dim), np.float32)


def knn_metrics(train_emb: np.ndarray, train_labels: np.ndarray, test_emb: np.ndarray, test_labels: np.ndarray,
                k: int = 5, metric: str = "cosine", train_ids: list[str] | None = None,
                test_ids: list[str] | None = None) -> dict:
    """Accuracy, weighted and macro P/R/F1, per-class report and confusion matrix of k-NN on TEST."""
    if train_ids is not None and test_ids is not None:
        leak = set(train_ids) & set(test_ids)
        if leak:
            raise ValueError(f"{len(leak)} test sample(s) are also in the k-NN training set (train = test)")
    result = knn_search(torch.from_numpy(test_emb), torch.from_numpy(train_emb), train_labels, k, metric,
                        num_classes=len(CLASSES))
    pred = result.predictions
    labels = list(range(len(CLASSES)))
    p, r, f1, _ = precision_recall_fscore_support(test_labels, pred, labels=labels, average="weighted",
                                                  zero_division=0)
    _, _, macro_f1, _ = precision_recall_fscore_support(test_labels, pred, labels=labels, average="macro",
                                                        zero_division=0)
    present = sorted(set(test_labels.tolist()) | set(pred.tolist()))
    return {
        "k": int(k),
        "metric": metric,
        "n_train": int(len(train_labels)),
        "n_test": int(len(test_labels)),
        "accuracy": float(accuracy_score(test_labels, pred)),
        "precision_weighted": float(p),
        "recall_weighted": float(r),
        "f1_weighted": float(f1),
        "f1_macro": float(macro_f1),
        "per_class": classification_report(test_labels, pred, labels=present,
                                           target_names=[CLASSES[i] for i in present], output_dict=True,
                                           zero_division=0),
        "confusion_matrix": {"labels": list(CLASSES),
                             "matrix": confusion_matrix(test_labels, pred, labels=labels).tolist()},
    }


def evaluate_model(model: WeldEmbeddingModel, train_set: WeldDataset, test_set: WeldDataset, k: int,
                   metric: str, device: str = "cpu") -> dict:
    train_emb = embed(model, train_set, device=device)
    test_emb = embed(model, test_set, device=device)
    return knn_metrics(train_emb, np.asarray(train_set.labels), test_emb, np.asarray(test_set.labels), k, metric,
                       train_set.ids, test_set.ids)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--metric", choices=METRICS, default="cosine")
    parser.add_argument("--untrained", action="store_true", help="baseline: same architecture, initial weights")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--allow-session-leakage", action="store_true",
                        help="evaluate even when a session appears in more than one of TRAIN/VAL/TEST")
    args = parser.parse_args(argv)
    loaded = load_checkpoint(args.checkpoint)
    model, config = loaded.model, loaded.config
    if args.untrained:
        model = build_model(config, seed=config.train.seed).eval()
    splits = split_records(read_manifest(args.data), config.train.val_fraction, config.train.seed)
    check_session_leakage(splits, args.allow_session_leakage)
    policy = config.train.incomplete_policy
    train_set = WeldDataset(splits["TRAIN"], config.preprocess, policy)
    test_set = WeldDataset(splits["TEST"], config.preprocess, policy)
    metrics = evaluate_model(model, train_set, test_set, args.k, args.metric)
    metrics.update({"checkpoint": str(args.checkpoint), "untrained": args.untrained,
                    "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                    "incomplete": {"train": train_set.report.summary(), "test": test_set.report.summary()}})
    text = json.dumps(metrics, indent=2)
    if args.out:
        args.out.write_text(text)
    print(json.dumps({k: metrics[k] for k in ("k", "metric", "n_train", "n_test", "accuracy", "f1_weighted",
                                               "f1_macro")}))


if __name__ == "__main__":
    main()
