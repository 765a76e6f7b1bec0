"""Train the weld embedding model with SupCon (+ optional CE), then write the k-NN gallery and evaluation.

CLI: python -m training.weld.train [--data DATA] --out runs/weld [--config small|full] [--epochs N] [--amp]
     [--optional-modalities audio,video --modality-dropout P] [--unfreeze-after N --backbone-lr X]
(without --data: a synthetic dataset in the real layout, written to OUT/data)

The zero-fill presence mask of each sample reaches the model; `--modality-dropout` drops the optional
modalities at random so the model learns to answer without them. Staged fine-tuning keeps the backbones
frozen for N epochs, then trains them at their own rate; log.json records `backbones` and `backbone_lr`.

Outputs in --out: latest.pt, best.pt, log.json (one record per epoch), data_report.json (incomplete
samples and the policy applied), session_report.json, gallery.npz (TRAIN embeddings of best.pt + labels +
sample ids), eval.json (k-NN on TEST, with the untrained-encoder baseline beside it), summary.json, and
train_state.pt (each epoch, every --save-every seconds and on SIGTERM / SIGINT), which --resume continues
exactly, mid-epoch too. The loop is training/loop.py's.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from families.storage import atomic_write_bytes
from families.weld.preprocessing import MODALITIES
from training import loop
from training.checkpoints import TrainResult
from training.weld.checkpoint import BEST, CHECKPOINT_FORMAT, FAMILY, LATEST, checkpoint_payload, load_checkpoint
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

__all__ = ["BEST", "CHECKPOINT_FORMAT", "FAMILY", "LATEST", "load_checkpoint", "main", "train"]
Log = Callable[[str], None]


def learning_rate(step: float, cfg: TrainConfig) -> float:
    """Linear warmup (warmup_start_lr -> lr over warmup_epochs) then cosine to min_lr; `step` in epochs."""
    if step < cfg.warmup_epochs:
        return cfg.warmup_start_lr + (cfg.lr - cfg.warmup_start_lr) * step / max(cfg.warmup_epochs, 1e-9)
    span = max(cfg.epochs - cfg.warmup_epochs, 1)
    progress = min((step - cfg.warmup_epochs) / span, 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


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


def weld_optimiser(model: WeldEmbeddingModel, tc: TrainConfig, use_amp: bool) -> Optimiser:
    """AdamW over the trainable parameters; with `unfreeze_after`, the backbones frozen now and in their own
    parameter group for the epoch they are unfrozen."""
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    if tc.unfreeze_after is None:
        params = [p for p in model.parameters() if p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": params}]
    else:
        if tc.unfreeze_after < 0:
            raise ValueError(f"unfreeze_after must be >= 0, got {tc.unfreeze_after}")
        model.freeze_backbones()
        backbone_ids = {id(p) for b in model.backbones() for p in b.parameters()}
        head = [p for p in model.parameters() if id(p) not in backbone_ids]
        backbones = [p for b in model.backbones() for p in b.parameters()]
        params = head + backbones
        groups = [{"params": head, "name": "head"},
                  {"params": backbones, "name": "backbones", "lr_scale": backbone_lr(tc) / tc.lr}]
    optimizer = loop.make_optimiser(groups, "adamw", tc.lr, weight_decay=tc.weight_decay)
    return Optimiser(params, optimizer, scaler, use_amp)


def training_step(model: WeldEmbeddingModel, opt: Optimiser, batch: dict[str, torch.Tensor], tc: TrainConfig,
                  device: str, rng: torch.Generator | None = None) -> tuple[float, dict[str, float]]:
    """One optimiser step on `batch` (at the rates the schedule set); returns (loss, its parts). The batch's
    presence `mask` (zero-filled modalities) reaches the model; with `tc.modality_dropout`, `rng` drops more."""
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


@dataclass
class Splits:
    train: WeldDataset
    val: WeldDataset
    test: WeldDataset


class WeldTask(loop.Task):
    """Epochs of stratified batches (an epoch's batches are fixed by the seed and the epoch, so a run resumed
    mid-epoch takes the same ones), SupCon of the VAL embeddings after each, warm-up + cosine rates."""

    def __init__(self, config: WeldConfig, splits: Splits, out_dir: Path, device: str, log: Log) -> None:
        tc = self.tc = config.train
        check_droppable(tc.modality_dropout, tc.optional_modalities)
        self.config, self.splits, self.out_dir, self.device, self.log = config, splits, out_dir, device, log
        self.model = build_model(config, seed=tc.seed).to(device)
        self.sampler = StratifiedBatchSampler(splits.train.labels, tc.batch_size, tc.classes_per_batch, seed=tc.seed)
        self.steps_per_epoch = len(self.sampler)
        self.opt = weld_optimiser(self.model, tc, bool(tc.amp and device.startswith("cuda")))
        self.optimiser = self.opt.optimizer
        self.schedule = lambda fraction: learning_rate(fraction * tc.epochs, tc) / tc.lr
        self.rng = torch.Generator().manual_seed(tc.seed)  # modality dropout's draws (none when it is off)
        self.history: list[dict[str, Any]] = []
        self._batches: tuple[int, list[list[int]]] | None = None
        self._record: dict[str, Any] = {}
        self._epoch_started = time.monotonic()

    def epoch(self, step: int) -> int:
        """The 0-based epoch of the step `step` (1-based: steps done)."""
        return max(step - 1, 0) // self.steps_per_epoch

    def step(self, index: int) -> dict[str, float]:
        epoch, position = divmod(index, self.steps_per_epoch)
        if self._batches is None or self._batches[0] != epoch:
            self.sampler.set_epoch(epoch)
            self._batches = (epoch, list(self.sampler))
        if self.tc.unfreeze_after is not None and epoch >= self.tc.unfreeze_after \
                and getattr(self.model, "_frozen", False):
            self.model.unfreeze_backbones()
            self.log(f"[train] epoch {epoch}: backbones unfrozen (peak lr {backbone_lr(self.tc):.2e})")
        self.model.train()
        batch = collate([self.splits.train[i] for i in self._batches[1][position]])
        try:
            loss, parts = training_step(self.model, self.opt, batch, self.tc, self.device, self.rng)
        except FloatingPointError:
            raise FloatingPointError(f"non-finite loss at epoch {epoch} step {position}") from None
        return {"loss": loss, **parts}

    def validate(self, progress: loop.Progress) -> float:
        val = validation_loss(self.model, self.splits.val, self.tc.temperature, self.device)
        running = progress.running
        keys = [k for k in (running[0] if running else {}) if k != "loss"]
        parts = {f"train_{k}": sum(r[k] for r in running) / len(running) for k in keys}
        train_loss = float(np.mean([r["loss"] for r in running])) if running else float("nan")
        self._record = {"epoch": self.epoch(progress.step), "train_loss": train_loss,
                        "val_supcon": val if math.isfinite(val) else None,  # JSON has no NaN: null
                        "lr": self.optimiser.param_groups[0]["lr"],
                        "seconds": round(time.monotonic() - self._epoch_started, 3), **parts}
        if self.tc.unfreeze_after is not None:
            self._record["backbones"] = "frozen" if getattr(self.model, "_frozen", False) else "trainable"
            self._record["backbone_lr"] = self.optimiser.param_groups[1]["lr"]
        return val

    def checkpoint(self, progress: loop.Progress, kind: str) -> dict[str, Any]:
        extra = {"epoch": self._record["epoch"], "val_supcon": self._record["val_supcon"]}
        if kind == "latest":
            extra["optimizer"] = self.optimiser.state_dict()
        return checkpoint_payload(self.model, self.config, extra)

    def validated(self, progress: loop.Progress, improved: bool) -> None:
        # Without a usable VAL loss, best.pt follows the latest epoch (and early stopping never triggers).
        record = {**self._record, "best": improved}
        self.history.append(record)
        atomic_write_bytes(self.out_dir / "log.json", json.dumps(self.history, indent=1).encode())
        val = record["val_supcon"] if record["val_supcon"] is not None else float("nan")
        self.log(f"[train] epoch {record['epoch']:3d} loss {record['train_loss']:.4f} val {val:.4f} "
                 f"lr {record['lr']:.2e} ({record['seconds']:.1f}s){' *' if improved else ''}")
        self._epoch_started = time.monotonic()

    def identity(self) -> dict[str, Any]:
        tc = self.tc
        return {"model": asdict(self.config.model), "batch_size": tc.batch_size, "lr": tc.lr, "epochs": tc.epochs,
                "seed": tc.seed, "unfreeze_after": tc.unfreeze_after, "modality_dropout": tc.modality_dropout}

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "rng": self.rng.get_state(), "scaler": self.opt.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = state["history"]
        self.rng.set_state(state["rng"])
        self.opt.scaler.load_state_dict(state["scaler"])


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


def loop_config(tc: TrainConfig, steps_per_epoch: int) -> loop.LoopConfig:
    """Validation and latest.pt once per epoch; early stopping after `patience` epochs without a better VAL
    SupCon; the time budget and `max_steps` may end the run mid-epoch (it is validated then)."""
    steps = tc.epochs * steps_per_epoch
    return loop.LoopConfig(steps=min(steps, tc.max_steps) if tc.max_steps else steps, seconds=tc.max_seconds,
                           eval_every=steps_per_epoch, patience=tc.patience, min_delta=1e-6, horizon=steps,
                           save_every_s=tc.save_every_s, threads=tc.threads, resume=tc.resume, best=BEST, latest=LATEST)


def fit(config: WeldConfig, splits: Splits, out_dir: Path, device: str, log: Log) -> dict[str, Any]:
    """Epochs until `epochs`, early stopping (`patience`) or the time budget; latest.pt every epoch, best.pt at
    each validation improvement, log.json."""
    tc = config.train
    task = WeldTask(config, splits, out_dir, device, log)
    outcome = loop.run(task, loop_config(tc, task.steps_per_epoch), out_dir, FAMILY, log=log)
    progress = outcome.progress
    if outcome.reason == "patience":
        log(f"[train] early stop: no val improvement for {tc.patience} epochs")
    elif outcome.reason == "seconds":
        log(f"[train] time budget of {tc.max_seconds:.0f}s reached")
    best_val = progress.best_score
    summary = {"best_epoch": task.epoch(progress.best_step), "best_val_supcon": best_val if math.isfinite(best_val)
               else None, "epochs_run": len(task.history), "train_seconds": round(progress.seconds, 1)}
    if not outcome.finished:
        summary.update(finished=False, step=progress.step, state=str(out_dir / loop.STATE))
    if tc.unfreeze_after is not None:
        summary["staged_fine_tuning"] = {"unfreeze_after": tc.unfreeze_after, "backbone_lr": backbone_lr(tc),
                                         "unfrozen": tc.unfreeze_after < len(task.history)}
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
    loop.seed_everything(config.train.seed)
    splits = prepare_data(config, Path(data), out_dir, allow_session_leakage, log)
    summary = {"checkpoint": str(out_dir / BEST), **fit(config, splits, out_dir, device, log)}
    if summary.get("finished", True):
        summary.update(evaluate_best(config, splits, out_dir, device, log))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return TrainResult(best_checkpoint=out_dir / BEST, out_dir=out_dir, summary=summary)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (default: synthetic, in OUT/data)")
    loop.add_flags(parser, out_default=Path("runs/weld"),
                   help={"steps": "stop after this many optimiser steps (default: the epochs decide)"})
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
    for key, value in loop.given_flags(args, {"seconds": "max_seconds", "steps": "max_steps"}).items():
        setattr(config.train, key, value)
    result = train(config, args.out, args.data, device=args.device, allow_session_leakage=args.allow_session_leakage)
    print(json.dumps(result.summary, indent=2))


if __name__ == "__main__":
    main()
