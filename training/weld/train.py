"""Train the weld embedding model with SupCon (+ optional CE), then write the k-NN gallery and evaluation.

CLI: python -m training.weld.train --data DATA --out runs/weld [--config small|full] [--epochs N] [--amp]

Outputs in --out: latest.pt, best.pt, log.json (one record per epoch), data_report.json (incomplete
samples and the policy applied), gallery.npz (TRAIN embeddings of best.pt + labels + sample ids),
eval.json (k-NN on TEST, with the untrained-encoder baseline beside it).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from families.storage import atomic_write_bytes
from families.weld.classes import CLASSES
from families.weld.preprocessing import MODALITIES
from training.checkpoints import save_atomic
from training.weld.config import WeldConfig, get_config
from training.weld.data import (
    WeldDataset,
    check_session_leakage,
    collate,
    read_manifest,
    sensor_statistics,
    split_records,
    write_report,
)
from training.weld.evaluate import embed, evaluate_model
from training.weld.losses import combined_loss, supcon_loss
from training.weld.model import WeldEmbeddingModel, build_model
from training.weld.sampler import StratifiedBatchSampler

CHECKPOINT_FORMAT = "weld-embedding/1"


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def learning_rate(step: float, cfg) -> float:
    """Linear warmup (warmup_start_lr -> lr over warmup_epochs) then cosine to min_lr; `step` in epochs."""
    if step < cfg.warmup_epochs:
        return cfg.warmup_start_lr + (cfg.lr - cfg.warmup_start_lr) * step / max(cfg.warmup_epochs, 1e-9)
    span = max(cfg.epochs - cfg.warmup_epochs, 1)
    progress = min((step - cfg.warmup_epochs) / span, 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def save_checkpoint(path: Path, model: WeldEmbeddingModel, config: WeldConfig, extra: dict) -> None:
    save_atomic({"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "labels": list(CLASSES),
                 "state_dict": model.state_dict(), **extra}, path)


@torch.no_grad()
def validation_loss(model: WeldEmbeddingModel, dataset: WeldDataset, temperature: float, device: str) -> float:
    if len(dataset) < 2:
        return float("nan")
    emb = torch.from_numpy(embed(model, dataset, device=device))
    return float(supcon_loss(emb, torch.tensor(dataset.labels), temperature))


def write_gallery(path: Path, embeddings: np.ndarray, labels: np.ndarray, ids: list[str]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, embeddings=embeddings.astype(np.float32), labels=labels.astype(np.int64),
             ids=np.asarray(ids, dtype=np.str_))
    atomic_write_bytes(path, buffer.getvalue())


def train(config: WeldConfig, data_root: Path, out_dir: Path, device: str = "cpu", log=print,
          allow_session_leakage: bool = False) -> dict:
    """Full run; returns paths and final metrics. A split that shares a session between TRAIN/VAL/TEST is
    refused (SessionLeakageError) unless `allow_session_leakage`."""
    tc = config.train
    out_dir.mkdir(parents=True, exist_ok=True)
    set_seed(tc.seed)
    started = time.monotonic()

    splits = split_records(read_manifest(data_root), tc.val_fraction, tc.seed)
    leaks = check_session_leakage(splits, allow_session_leakage, log)
    (out_dir / "session_report.json").write_text(json.dumps({"leaking_sessions": leaks}, indent=2))
    mean, std = sensor_statistics(splits["TRAIN"], config.preprocess.sensor_steps)
    config.preprocess.sensor_mean, config.preprocess.sensor_std = mean, std
    datasets = {s.lower(): WeldDataset(splits[s], config.preprocess, tc.incomplete_policy) for s in splits}
    write_report(out_dir / "data_report.json", {k: d.report for k, d in datasets.items()})
    for name, ds in datasets.items():
        log(f"[data] {name}: {ds.report.summary()}")
    train_set, val_set, test_set = datasets["train"], datasets["val"], datasets["test"]

    model = build_model(config, seed=tc.seed).to(device)
    sampler = StratifiedBatchSampler(train_set.labels, tc.batch_size, tc.classes_per_batch, seed=tc.seed)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, collate_fn=collate)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.warmup_start_lr, weight_decay=tc.weight_decay)
    use_amp = bool(tc.amp and device.startswith("cuda"))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    history: list[dict] = []
    best_val, best_epoch, stale = float("inf"), -1, 0
    steps_per_epoch = len(sampler)
    for epoch in range(tc.epochs):
        model.train()
        sampler.set_epoch(epoch)
        t0 = time.monotonic()
        losses, parts_sum = [], {}
        for step, batch in enumerate(loader):
            lr = learning_rate(epoch + step / steps_per_epoch, tc)
            for group in optimizer.param_groups:
                group["lr"] = lr
            inputs = [batch[m].to(device) for m in MODALITIES]
            labels = batch["label"].to(device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                emb = model(*inputs)
                logits = model.classifier(emb) if tc.ce_weight > 0 else None
            loss, parts = combined_loss(emb, logits, labels, tc.temperature, tc.ce_weight)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at epoch {epoch} step {step}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            for key, value in parts.items():
                parts_sum[key] = parts_sum.get(key, 0.0) + value
        val = validation_loss(model, val_set, tc.temperature, device)
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_supcon": val,
                  "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.monotonic() - t0, 3),
                  **{f"train_{k}": v / max(len(losses), 1) for k, v in parts_sum.items()}}
        improved = math.isfinite(val) and val < best_val - 1e-6
        extra = {"epoch": epoch, "val_supcon": val, "optimizer": optimizer.state_dict()}
        save_checkpoint(out_dir / "latest.pt", model, config, extra)
        if improved or best_epoch < 0:
            best_val, best_epoch, stale = (val if math.isfinite(val) else best_val), epoch, 0
            save_checkpoint(out_dir / "best.pt", model, config, {"epoch": epoch, "val_supcon": val})
        else:
            stale += 1
        record["best"] = best_epoch == epoch
        history.append(record)
        atomic_write_bytes(out_dir / "log.json", json.dumps(history, indent=1).encode())
        log(f"[train] epoch {epoch:3d} loss {record['train_loss']:.4f} val {val:.4f} lr {record['lr']:.2e} "
            f"({record['seconds']:.1f}s){' *' if record['best'] else ''}")
        if stale >= tc.patience:
            log(f"[train] early stop: no val improvement for {tc.patience} epochs")
            break
        if tc.max_seconds is not None and time.monotonic() - started > tc.max_seconds:
            log(f"[train] time budget of {tc.max_seconds:.0f}s reached")
            break

    # Gallery + evaluation with the best weights.
    best = torch.load(out_dir / "best.pt", map_location=device, weights_only=False)
    model.load_state_dict(best["state_dict"])
    model.eval()
    gallery_emb = embed(model, train_set, device=device)
    write_gallery(out_dir / "gallery.npz", gallery_emb, np.asarray(train_set.labels), train_set.ids)
    result = {"checkpoint": str(out_dir / "best.pt"), "best_epoch": best_epoch, "best_val_supcon": best_val,
              "epochs_run": len(history), "train_seconds": round(time.monotonic() - started, 1)}
    if len(test_set):
        trained = evaluate_model(model, train_set, test_set, tc.knn_k, tc.knn_metric, device)
        baseline = evaluate_model(build_model(config, seed=tc.seed).to(device), train_set, test_set,
                                  tc.knn_k, tc.knn_metric, device)
        evaluation = {"trained": trained, "untrained_baseline": baseline, "checkpoint": str(out_dir / "best.pt"),
                      "timestamp": datetime.now(UTC).isoformat(timespec="seconds")}
        (out_dir / "eval.json").write_text(json.dumps(evaluation, indent=2))
        result.update({"test_accuracy": trained["accuracy"], "test_f1_macro": trained["f1_macro"],
                       "baseline_accuracy": baseline["accuracy"], "baseline_f1_macro": baseline["f1_macro"]})
        log(f"[eval] k-NN (k={tc.knn_k}, {tc.knn_metric}) test accuracy {trained['accuracy']:.3f} "
            f"macro-F1 {trained['f1_macro']:.3f} | untrained baseline {baseline['accuracy']:.3f} / "
            f"{baseline['f1_macro']:.3f}")
    (out_dir / "summary.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/weld"))
    parser.add_argument("--config", default="small", help="small | full")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--ce-weight", type=float, default=None)
    parser.add_argument("--policy", choices=("skip", "zero_fill"), default=None)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--allow-session-leakage", action="store_true",
                        help="train even when a session appears in more than one of TRAIN/VAL/TEST")
    args = parser.parse_args()
    config = get_config(args.config)
    if args.epochs is not None:
        config.train.epochs = args.epochs
    if args.ce_weight is not None:
        config.train.ce_weight = args.ce_weight
    if args.policy:
        config.train.incomplete_policy = args.policy
    config.train.amp = args.amp
    result = train(config, args.data, args.out, args.device, allow_session_leakage=args.allow_session_leakage)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
