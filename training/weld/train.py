"""Train the weld embedding model with SupCon (+ optional CE), then write the k-NN gallery and evaluation.

CLI: python -m training.weld.train [--data DATA] --out runs/weld [--config small|full] [--epochs N] [--amp]
     [--optional-modalities audio,video --modality-dropout P] [--unfreeze-after N --backbone-lr X]
(without --data: a synthetic dataset in the real layout, written to OUT/data)

The zero-fill presence mask of each sample reaches the model; `--modality-dropout` drops the optional
modalities at random so the model learns to answer without them. Staged fine-tuning keeps the backbones
frozen for N epochs, then trains them at their own rate; log.json records `backbones` and `backbone_lr`.

Outputs in --out: latest.pt, best.pt, log.json (one record per epoch), data_report.json (incomplete
samples and the policy applied), session_report.json, gallery.npz (TRAIN embeddings of best.pt + labels +
sample ids), eval.json (k-NN on TEST, with the untrained-encoder baseline beside it), summary.json.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from families.storage import atomic_write_bytes
from families.weld.classes import CLASSES
from families.weld.preprocessing import MODALITIES
from training.checkpoints import Checkpoint, TrainResult, read_checkpoint, save_checkpoint
from training.weld.config import TrainConfig, WeldConfig, load_config
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
from training.weld.modality_dropout import check_droppable, drop_modalities
from training.weld.model import WeldEmbeddingModel, build_model
from training.weld.sampler import StratifiedBatchSampler
from training.weld.synthetic import generate

FAMILY = "weld"
CHECKPOINT_FORMAT = "weld-embedding/1"  # what untagged checkpoints (before the family tag) are recognised by
BEST, LATEST = "best.pt", "latest.pt"
Log = Callable[[str], None]


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def learning_rate(step: float, cfg: TrainConfig) -> float:
    """Linear warmup (warmup_start_lr -> lr over warmup_epochs) then cosine to min_lr; `step` in epochs."""
    if step < cfg.warmup_epochs:
        return cfg.warmup_start_lr + (cfg.lr - cfg.warmup_start_lr) * step / max(cfg.warmup_epochs, 1e-9)
    span = max(cfg.epochs - cfg.warmup_epochs, 1)
    progress = min((step - cfg.warmup_epochs) / span, 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def _save(path: Path, model: WeldEmbeddingModel, config: WeldConfig, extra: dict[str, Any]) -> None:
    save_checkpoint(FAMILY, {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "labels": list(CLASSES),
                             "state_dict": model.state_dict(), **extra}, path)


def load_checkpoint(path: Path) -> Checkpoint:
    """The model (eval mode, CPU), its `WeldConfig`, and in `extras` the rest of the file (epoch, val_supcon)."""
    payload = read_checkpoint(path, FAMILY, legacy=lambda p: p.get("format") == CHECKPOINT_FORMAT)
    config = WeldConfig.from_dict(payload["config"])
    model = build_model(config)
    model.load_state_dict(payload["state_dict"])
    extras = {k: v for k, v in payload.items() if k not in ("state_dict", "optimizer", "config")}
    return Checkpoint(family=FAMILY, path=Path(path), model=model.eval(), config=config, extras=extras)


@torch.no_grad()
def validation_loss(model: WeldEmbeddingModel, dataset: WeldDataset, temperature: float, device: str) -> float:
    """SupCon of the VAL embeddings; NaN when no class has two samples (no positive pair: SupCon is 0 whatever
    the model, so it cannot select a checkpoint)."""
    if max(Counter(dataset.labels).values(), default=0) < 2:
        return float("nan")
    emb = torch.from_numpy(embed(model, dataset, device=device))
    return float(supcon_loss(emb, torch.tensor(dataset.labels), temperature))


def write_gallery(path: Path, embeddings: np.ndarray, labels: np.ndarray, ids: list[str]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, embeddings=embeddings.astype(np.float32), labels=labels.astype(np.int64),
             ids=np.asarray(ids, dtype=np.str_))
    atomic_write_bytes(path, buffer.getvalue())


@dataclass
class Optimiser:
    """What one step updates: the trainable parameters, AdamW and the AMP gradient scaler. With staged
    fine-tuning the backbones are AdamW's second group, at `lr_scale` x the schedule's rate (no gradient, so
    untouched, while they are frozen)."""

    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    use_amp: bool


def backbone_lr(tc: TrainConfig) -> float:
    """The backbones' peak learning rate under staged fine-tuning (default: a tenth of `lr`)."""
    return tc.backbone_lr if tc.backbone_lr is not None else tc.lr / 10


def make_optimiser(model: WeldEmbeddingModel, tc: TrainConfig, use_amp: bool) -> Optimiser:
    """AdamW over the trainable parameters; with `unfreeze_after`, the backbones frozen now and in their own
    parameter group for the epoch they are unfrozen."""
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    if tc.unfreeze_after is None:
        params = [p for p in model.parameters() if p.requires_grad]
        return Optimiser(params, torch.optim.AdamW(params, lr=tc.warmup_start_lr, weight_decay=tc.weight_decay),
                         scaler, use_amp)
    if tc.unfreeze_after < 0:
        raise ValueError(f"unfreeze_after must be >= 0, got {tc.unfreeze_after}")
    model.freeze_backbones()
    backbone_ids = {id(p) for b in model.backbones() for p in b.parameters()}
    head = [p for p in model.parameters() if id(p) not in backbone_ids]
    backbones = [p for b in model.backbones() for p in b.parameters()]
    groups = [{"params": head, "name": "head"},
              {"params": backbones, "name": "backbones", "lr_scale": backbone_lr(tc) / tc.lr}]
    optimizer = torch.optim.AdamW(groups, lr=tc.warmup_start_lr, weight_decay=tc.weight_decay)
    return Optimiser(head + backbones, optimizer, scaler, use_amp)


def training_step(model: WeldEmbeddingModel, opt: Optimiser, batch: dict[str, torch.Tensor], tc: TrainConfig,
                  lr: float, device: str, rng: torch.Generator | None = None) -> tuple[float, dict[str, float]]:
    """One optimiser step on `batch` at learning rate `lr`; returns (loss, its parts). The batch's presence
    `mask` (zero-filled modalities) reaches the model; with `tc.modality_dropout`, `rng` drops more."""
    for group in opt.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    inputs = {m: batch[m] for m in MODALITIES}
    mask = batch["mask"] if "mask" in batch else torch.ones(len(batch["label"]), len(MODALITIES), dtype=torch.bool)
    if tc.modality_dropout > 0:
        inputs, mask = drop_modalities(inputs, mask, tc.modality_dropout, tc.optional_modalities,
                                       rng if rng is not None else torch.Generator().manual_seed(tc.seed))
    labels = batch["label"].to(device)
    with torch.autocast("cuda", dtype=torch.float16, enabled=opt.use_amp):
        emb = model(*[inputs[m].to(device) for m in MODALITIES], mask=mask.to(device))
        logits = model.classifier(emb) if tc.ce_weight > 0 else None
    loss, parts = combined_loss(emb, logits, labels, tc.temperature, tc.ce_weight)
    if not torch.isfinite(loss):
        raise FloatingPointError("non-finite loss")
    opt.optimizer.zero_grad(set_to_none=True)
    opt.scaler.scale(loss).backward()
    opt.scaler.unscale_(opt.optimizer)
    torch.nn.utils.clip_grad_norm_(opt.params, tc.grad_clip)
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    return float(loss.detach()), parts


def train_epoch(model: WeldEmbeddingModel, opt: Optimiser, loader: torch.utils.data.DataLoader,
                sampler: StratifiedBatchSampler, epoch: int, tc: TrainConfig, device: str,
                rng: torch.Generator | None = None) -> dict[str, float]:
    """One pass over the stratified batches; returns the epoch's mean loss and loss parts."""
    model.train()
    sampler.set_epoch(epoch)
    losses, parts_sum = [], {}
    for step, batch in enumerate(loader):
        try:
            loss, parts = training_step(model, opt, batch, tc, learning_rate(epoch + step / len(sampler), tc), device,
                                        rng)
        except FloatingPointError:
            raise FloatingPointError(f"non-finite loss at epoch {epoch} step {step}") from None
        losses.append(loss)
        for key, value in parts.items():
            parts_sum[key] = parts_sum.get(key, 0.0) + value
    means = {f"train_{k}": v / max(len(losses), 1) for k, v in parts_sum.items()}
    return {"train_loss": float(np.mean(losses)), **means}


@dataclass
class Splits:
    train: WeldDataset
    val: WeldDataset
    test: WeldDataset


def prepare_data(config: WeldConfig, data_root: Path, out_dir: Path, allow_session_leakage: bool, log: Log) -> Splits:
    """Splits of the dataset (session leakage checked), sensor statistics of TRAIN into `config.preprocess`,
    and the data reports in `out_dir`."""
    tc = config.train
    splits = split_records(read_manifest(data_root), tc.val_fraction, tc.seed)
    leaks = check_session_leakage(splits, allow_session_leakage, log)
    (out_dir / "session_report.json").write_text(json.dumps({"leaking_sessions": leaks}, indent=2))
    mean, std = sensor_statistics(splits["TRAIN"], config.preprocess.sensor_steps)
    config.preprocess.sensor_mean, config.preprocess.sensor_std = mean, std
    datasets = {s.lower(): WeldDataset(splits[s], config.preprocess, tc.incomplete_policy) for s in splits}
    write_report(out_dir / "data_report.json", {k: d.report for k, d in datasets.items()})
    for name, ds in datasets.items():
        log(f"[data] {name}: {ds.report.summary()}")
    return Splits(datasets["train"], datasets["val"], datasets["test"])


def evaluate_best(config: WeldConfig, splits: Splits, out_dir: Path, device: str, log: Log) -> dict[str, Any]:
    """The gallery (TRAIN embeddings of best.pt) and, when there is a TEST split, eval.json beside the
    untrained-encoder baseline; returns the test figures."""
    tc = config.train
    model = load_checkpoint(out_dir / BEST).model.to(device)
    write_gallery(out_dir / "gallery.npz", embed(model, splits.train, device=device),
                  np.asarray(splits.train.labels), splits.train.ids)
    if not len(splits.test):
        return {}
    trained = evaluate_model(model, splits.train, splits.test, tc.knn_k, tc.knn_metric, device)
    baseline = evaluate_model(build_model(config, seed=tc.seed).to(device), splits.train, splits.test,
                              tc.knn_k, tc.knn_metric, device)
    evaluation = {"trained": trained, "untrained_baseline": baseline, "checkpoint": str(out_dir / BEST),
                  "timestamp": datetime.now(UTC).isoformat(timespec="seconds")}
    (out_dir / "eval.json").write_text(json.dumps(evaluation, indent=2))
    log(f"[eval] k-NN (k={tc.knn_k}, {tc.knn_metric}) test accuracy {trained['accuracy']:.3f} "
        f"macro-F1 {trained['f1_macro']:.3f} | untrained baseline {baseline['accuracy']:.3f} / "
        f"{baseline['f1_macro']:.3f}")
    return {"test_accuracy": trained["accuracy"], "test_f1_macro": trained["f1_macro"],
            "baseline_accuracy": baseline["accuracy"], "baseline_f1_macro": baseline["f1_macro"]}


def fit(config: WeldConfig, splits: Splits, out_dir: Path, device: str, log: Log) -> dict[str, Any]:
    """Epochs until `epochs`, early stopping (`patience`) or the time budget; latest.pt every epoch, best.pt at
    each validation improvement, log.json."""
    tc = config.train
    check_droppable(tc.modality_dropout, tc.optional_modalities)
    started = time.monotonic()
    model = build_model(config, seed=tc.seed).to(device)
    sampler = StratifiedBatchSampler(splits.train.labels, tc.batch_size, tc.classes_per_batch, seed=tc.seed)
    loader = torch.utils.data.DataLoader(splits.train, batch_sampler=sampler, collate_fn=collate)
    opt = make_optimiser(model, tc, bool(tc.amp and device.startswith("cuda")))
    rng = torch.Generator().manual_seed(tc.seed)  # modality dropout's draws (none when it is off)
    history: list[dict] = []
    best_val, best_epoch, stale = float("inf"), -1, 0
    for epoch in range(tc.epochs):
        t0 = time.monotonic()
        if tc.unfreeze_after is not None and epoch == tc.unfreeze_after:
            model.unfreeze_backbones()
            log(f"[train] epoch {epoch}: backbones unfrozen (peak lr {backbone_lr(tc):.2e})")
        losses = train_epoch(model, opt, loader, sampler, epoch, tc, device, rng)
        val = validation_loss(model, splits.val, tc.temperature, device)
        stored = val if math.isfinite(val) else None  # JSON has no NaN: null in log.json and the manifest
        record = {"epoch": epoch, "train_loss": losses.pop("train_loss"), "val_supcon": stored,
                  "lr": opt.optimizer.param_groups[0]["lr"], "seconds": round(time.monotonic() - t0, 3), **losses}
        if tc.unfreeze_after is not None:
            record["backbones"] = "frozen" if getattr(model, "_frozen", False) else "trainable"
            record["backbone_lr"] = opt.optimizer.param_groups[1]["lr"]
        # Without a usable VAL loss, best.pt follows the latest epoch (and early stopping never triggers).
        improved = val < best_val - 1e-6 if math.isfinite(val) else True
        _save(out_dir / LATEST, model, config, {"epoch": epoch, "val_supcon": stored,
                                                "optimizer": opt.optimizer.state_dict()})
        if improved or best_epoch < 0:
            best_val, best_epoch, stale = (val if math.isfinite(val) else best_val), epoch, 0
            _save(out_dir / BEST, model, config, {"epoch": epoch, "val_supcon": stored})
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
    summary = {"best_epoch": best_epoch, "best_val_supcon": best_val if math.isfinite(best_val) else None,
               "epochs_run": len(history), "train_seconds": round(time.monotonic() - started, 1)}
    if tc.unfreeze_after is not None:
        summary["staged_fine_tuning"] = {"unfreeze_after": tc.unfreeze_after, "backbone_lr": backbone_lr(tc),
                                         "unfrozen": tc.unfreeze_after < len(history)}
    if tc.modality_dropout > 0:
        summary["modality_dropout"] = {"p": tc.modality_dropout, "modalities": list(tc.optional_modalities)}
    return summary


def train(config: WeldConfig, out_dir: Path, data: Path | None = None, *, log: Log = print, device: str = "cpu",
          allow_session_leakage: bool = False) -> TrainResult:
    """Train on the dataset folder `data` (the Intel robotic welding layout, training/weld/data.py), or on a
    synthetic one written to `out_dir/data`. A split that shares a session between TRAIN/VAL/TEST is refused
    (SessionLeakageError) unless `allow_session_leakage`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = out_dir / "data"
        if not (data / "manifest.csv").is_file():
            generate(data, seed=config.train.seed)
    set_seed(config.train.seed)
    splits = prepare_data(config, Path(data), out_dir, allow_session_leakage, log)
    summary = {"checkpoint": str(out_dir / BEST), **fit(config, splits, out_dir, device, log)}
    summary.update(evaluate_best(config, splits, out_dir, device, log))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return TrainResult(best_checkpoint=out_dir / BEST, out_dir=out_dir, summary=summary)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (default: synthetic, in OUT/data)")
    parser.add_argument("--out", type=Path, default=Path("runs/weld"))
    parser.add_argument("--config", default="small", help="small | full")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--ce-weight", type=float, default=None)
    parser.add_argument("--policy", choices=("skip", "zero_fill"), default=None)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--optional-modalities", default=None,
                        help="comma list of modalities a served version may go without (export declares them)")
    parser.add_argument("--modality-dropout", type=float, default=None,
                        help="chance that training drops each optional modality of a sample (0 = never)")
    parser.add_argument("--unfreeze-after", type=int, default=None,
                        help="staged fine-tuning: backbones frozen for the first N epochs, then trained")
    parser.add_argument("--backbone-lr", type=float, default=None,
                        help="peak learning rate of the unfrozen backbones (default: lr / 10)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--allow-session-leakage", action="store_true",
                        help="train even when a session appears in more than one of TRAIN/VAL/TEST")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    if args.epochs is not None:
        config.train.epochs = args.epochs
    if args.ce_weight is not None:
        config.train.ce_weight = args.ce_weight
    if args.policy:
        config.train.incomplete_policy = args.policy
    config.train.amp = args.amp
    if args.optional_modalities is not None:
        config.train.optional_modalities = [m.strip() for m in args.optional_modalities.split(",") if m.strip()]
    for flag in ("modality_dropout", "unfreeze_after", "backbone_lr"):
        if getattr(args, flag) is not None:
            setattr(config.train, flag, getattr(args, flag))
    result = train(config, args.out, args.data, device=args.device, allow_session_leakage=args.allow_session_leakage)
    print(json.dumps(result.summary, indent=2))


if __name__ == "__main__":
    main()
