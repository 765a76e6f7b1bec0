"""Train the traffic forecaster.

    python -m training.traffic.train --config quick --out runs/traffic-quick
    python -m training.traffic.train --config fallback --data-dir data/METR-LA --out runs/phase1
    python -m training.traffic.train --config quick --num-stages 4 --patch-sizes 1,2 --cross-stage-attention off
    python -m training.traffic.train --config quick --out runs/traffic-quick --resume     # continue latest.pt

Writes to --out: `latest.pt` (every epoch, with optimizer state: resumable), `best.pt` (lowest validation
masked MAE), `metrics.jsonl` (one JSON object per epoch), `metrics.json` (the test-split horizon table of
best.pt next to the last-value and historical-average baselines) and `config.json`.
Without --data-dir the synthetic generator writes METR-LA-format files into <out>/data and the same
loader reads them.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from families.traffic.preprocessing import STEP_SECONDS
from training.checkpoints import FAMILY_KEY, Checkpoint, TrainResult, read_checkpoint, save_checkpoint
from training.threads import torch_threads
from training.traffic.baselines import baseline_predictions
from training.traffic.config import TrafficConfig, TrainConfig, load_config
from training.traffic.data import TrafficData, prepare_data
from training.traffic.metrics import horizon_table, masked_mae_torch
from training.traffic.model import TrafficForecaster, TrafficModelConfig, count_parameters

FAMILY = "traffic"
LEGACY_FORMAT = "traffic-checkpoint/1"  # what checkpoints said they were before they carried their family
BEST, LATEST = "best.pt", "latest.pt"
Log = Callable[[str], None] | None


@dataclass
class Progress:
    """Where a run stands; saved at the top level of every checkpoint, so that `resume` continues exactly."""

    epoch: int = 0
    best_val_mae: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch (metrics.jsonl)

    def update(self, epoch: int, val_mae: float) -> bool:
        """Count the epoch; True when its validation MAE is the best so far."""
        self.epoch = epoch
        improved = val_mae < self.best_val_mae
        if improved:
            self.best_val_mae, self.best_epoch, self.bad_epochs = val_mae, epoch, 0
        else:
            self.bad_epochs += 1
        return improved


def build_model(config: TrafficConfig, data: TrafficData) -> TrafficForecaster:
    model_cfg = config.for_data(data.num_nodes, data.use_time_of_day, data.use_day_of_week)
    return TrafficForecaster(model_cfg, data.adjacency, data.scaler.mean, data.scaler.std)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- evaluation -----------------------------------------------------------------------------------------

@torch.no_grad()
def predict(model: TrafficForecaster, data: TrafficData, split: str, batch_size: int = 64,
            max_batches: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    device = next(model.parameters()).device
    count = len(data.anchors[split])
    if max_batches is not None:
        count = min(count, max_batches * batch_size)
    preds, labels = [], []
    for start in range(0, count, batch_size):
        x, y = data.windows(split, slice(start, min(start + batch_size, count)))
        preds.append(model(torch.from_numpy(x).to(device)).cpu().numpy())
        labels.append(y)
    return np.concatenate(preds), np.concatenate(labels)


def evaluate_table(model: TrafficForecaster, data: TrafficData, split: str = "test", batch_size: int = 64,
                   max_batches: int | None = None) -> dict[str, dict[str, float]]:
    """The evaluation step: masked MAE / RMSE / MAPE per horizon of a split (or its first batches)."""
    return horizon_table(*predict(model, data, split, batch_size, max_batches))


def baseline_tables(data: TrafficData, split: str = "test",
                    limit: int | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Baseline tables on a split (or its first `limit` windows, to match a bounded model evaluation)."""
    return {name: horizon_table(p[:limit], y[:limit]) for name, (p, y) in baseline_predictions(data, split).items()}


# ---- checkpoints ----------------------------------------------------------------------------------------

def _payload(model: TrafficForecaster, optimizer: torch.optim.Optimizer, config: TrafficConfig, data: TrafficData,
             progress: Progress) -> dict[str, Any]:
    return {
        "config": config.to_dict(),
        "model_config": model.cfg.to_dict(),
        "state_dict": model.state_dict(),
        "sensor_ids": list(data.sensor_ids),
        "scaler": {"mean": data.scaler.mean, "std": data.scaler.std},
        "features": data.feature_names,
        "step_seconds": STEP_SECONDS,
        "data": data.description(),
        "num_parameters": count_parameters(model),
        **copy.deepcopy(asdict(progress)),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }


def checkpoint_step(model: TrafficForecaster, optimizer: torch.optim.Optimizer, config: TrafficConfig,
                    data: TrafficData, progress: Progress, out_dir: Path, improved: bool) -> None:
    """latest.pt after every epoch, best.pt when the epoch improved on the validation MAE."""
    payload = _payload(model, optimizer, config, data, progress)
    save_checkpoint(FAMILY, payload, out_dir / LATEST)
    if improved:
        save_checkpoint(FAMILY, payload, out_dir / BEST)


def _read(path: Path) -> dict[str, Any]:
    return read_checkpoint(path, FAMILY, legacy=lambda p: p.get("format") == LEGACY_FORMAT)


def read_without_training_state(path: Path) -> dict[str, Any]:
    """A checkpoint's weights and provenance without what only resuming needs (optimizer, RNG) or its tag."""
    return {k: v for k, v in _read(path).items() if k not in ("optimizer", "torch_rng", FAMILY_KEY)}


def _model_of(payload: dict[str, Any]) -> TrafficForecaster:
    scaler = payload["scaler"]
    model = TrafficForecaster(TrafficModelConfig.from_dict(payload["model_config"]), None, scaler["mean"],
                              scaler["std"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def load_checkpoint(path: Path) -> Checkpoint:
    """The eval-mode model on the CPU, its training config, and in `extras` the rest of the file but the
    weights and the optimizer: sensor ids, scaler, features, step, data summary, metrics, progress."""
    payload = read_without_training_state(path)
    extras = {k: v for k, v in payload.items() if k != "state_dict"}
    return Checkpoint(family=FAMILY, path=Path(path), model=_model_of(payload),
                      config=TrafficConfig.from_dict(payload["config"]), extras=extras)


def _resume(model: TrafficForecaster, optimizer: torch.optim.Optimizer, path: Path, log: Log) -> Progress:
    payload = _read(path)
    model.load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["torch_rng"])
    progress = Progress(**{f.name: payload[f.name] for f in fields(Progress)})
    if log:
        log(f"resumed from {path} at epoch {progress.epoch}")
    return progress


# ---- training -------------------------------------------------------------------------------------------

def training_step(model: TrafficForecaster, optimizer: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor,
                  amp: bool = False, grad_clip: float = 0.0) -> torch.Tensor:
    """One optimiser step; returns the final stage's prediction (detached, mph)."""
    # bf16 autocast: on GPU SDPA takes its fused kernels (the cross-stage attention is long); on a CPU with
    # AMX it cut the Phase 1 step 2.7 -> 2.3 s (batch 8) and 13.1 -> 8.3 s (batch 32)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        outputs = model.forward_all(x)
    outputs = [out.float() for out in outputs]
    # Deep supervision: every stage's prediction gets its own loss (one output without it).
    loss = sum(masked_mae_torch(out, target) for out in outputs) / len(outputs)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return outputs[-1].detach()


def train_epoch(model: TrafficForecaster, optimizer: torch.optim.Optimizer, data: TrafficData, tcfg: TrainConfig,
                epoch: int, started: float) -> tuple[list[float], int, bool]:
    """The training steps of one epoch: (per-batch MAE, batches planned, whether the time budget ran out)."""
    model.train()
    device = next(model.parameters()).device
    amp = tcfg.amp  # training only; evaluation stays FP32 (on CPU bf16 needs AMX/AVX512-BF16 to pay)
    order = np.random.default_rng(tcfg.seed * 1000 + epoch).permutation(len(data.anchors["train"]))
    batches = range(0, len(order), tcfg.batch_size)
    if tcfg.max_batches_per_epoch:
        batches = batches[: tcfg.max_batches_per_epoch]
    losses: list[float] = []
    for start in batches:
        if tcfg.time_budget_s and losses and time.perf_counter() - started > tcfg.time_budget_s:
            return losses, len(batches), True  # bounded wall time (default model): validate and save what we have
        x, y = data.windows("train", order[start : start + tcfg.batch_size])
        target = torch.from_numpy(y).to(device)
        final = training_step(model, optimizer, torch.from_numpy(x).to(device), target, amp, tcfg.grad_clip or 0.0)
        losses.append(masked_mae_torch(final, target).item())
    return losses, len(batches), False


def run_epoch(model: TrafficForecaster, optimizer: torch.optim.Optimizer, config: TrafficConfig, data: TrafficData,
              progress: Progress, out_dir: Path, started: float, log: Log) -> bool:
    """Train, validate, log and checkpoint one epoch; True when the run must stop for its time budget."""
    tcfg = config.train
    epoch = progress.epoch + 1
    epoch_start = time.perf_counter()
    losses, planned, out_of_time = train_epoch(model, optimizer, data, tcfg, epoch, started)
    train_seconds = time.perf_counter() - epoch_start
    val = evaluate_table(model, data, "val", tcfg.eval_batch_size, tcfg.max_eval_batches)["average"]
    improved = progress.update(epoch, val["mae"])
    record = {
        "epoch": epoch, "train_mae": float(np.mean(losses)), "val_mae": val["mae"], "val_rmse": val["rmse"],
        "val_mape": val["mape"], "lr": optimizer.param_groups[0]["lr"], "train_seconds": train_seconds,
        "epoch_seconds": time.perf_counter() - epoch_start, "batches": len(losses), "complete": len(losses) == planned,
    }
    progress.history.append(record)
    with (out_dir / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    if log:
        log(json.dumps(record))
    checkpoint_step(model, optimizer, config, data, progress, out_dir, improved)
    return out_of_time or bool(tcfg.time_budget_s and time.perf_counter() - started > tcfg.time_budget_s)


def evaluate_best(config: TrafficConfig, data: TrafficData, progress: Progress, out_dir: Path,
              started: float) -> dict[str, Any]:
    """best.pt on the test split beside the baselines: the run's summary, also stored in best.pt and
    metrics.json."""
    tcfg = config.train
    best = _read(out_dir / BEST)
    model = _model_of(best).to(torch.device(tcfg.device or "cpu"))
    # The whole test split unless `test_max_batches` bounds it (the time-boxed default model only).
    test = evaluate_table(model, data, "test", tcfg.eval_batch_size, tcfg.test_max_batches)
    windows = len(data.anchors["test"])
    if tcfg.test_max_batches:
        windows = min(windows, tcfg.test_max_batches * tcfg.eval_batch_size)
    tables = {"model": test, **baseline_tables(data, "test", windows)}
    # seconds per full epoch (a budget-truncated last epoch is left out), and per training batch
    seconds = [r["train_seconds"] for r in progress.history if r.get("complete", True)]
    per_batch = [r["train_seconds"] / max(r["batches"], 1) for r in progress.history]
    summary = {
        "config": config.name, "best_checkpoint": str(out_dir / BEST), "latest_checkpoint": str(out_dir / LATEST),
        "best_epoch": progress.best_epoch, "epochs": progress.epoch, "best_val_mae": progress.best_val_mae,
        "num_parameters": count_parameters(model),
        "seconds_per_epoch": float(np.mean(seconds)) if seconds else None,
        "seconds_per_batch": float(np.mean(per_batch)) if per_batch else None,
        "wall_seconds": time.perf_counter() - started, "data": data.description(), "test_windows": windows,
        "test": tables,
    }
    best["metrics"] = {"test": tables, "test_windows": windows}
    save_checkpoint(FAMILY, best, out_dir / BEST)
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


def fit(config: TrafficConfig, out_dir: Path, data: TrafficData, *, log: Log = print) -> TrainResult:
    """Train on prepared data (`train` reads or generates it; the benchmarks share one dataset)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tcfg = config.train
    with torch_threads(tcfg.threads):
        seed_everything(tcfg.seed)
        model = build_model(config, data).to(torch.device(tcfg.device or "cpu"))
        config = replace(config, model=model.cfg)  # what config.json and the checkpoints record
        optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        latest = out_dir / LATEST
        progress = _resume(model, optimizer, latest, log) if tcfg.resume and latest.exists() else Progress()
        started = time.perf_counter()
        while progress.epoch < tcfg.epochs and progress.bad_epochs < tcfg.patience:
            if run_epoch(model, optimizer, config, data, progress, out_dir, started, log):
                break
        summary = evaluate_best(config, data, progress, out_dir, started)
    return TrainResult(best_checkpoint=out_dir / BEST, out_dir=out_dir, summary=summary)


def train(config: TrafficConfig, out_dir: Path, data: Path | None = None, *, log: Log = print) -> TrainResult:
    """Train per `config` on the METR-LA-format folder `data` (None: what the config's data section says, by
    default the synthetic generator's files under <out_dir>/data)."""
    if data is not None:
        config = replace(config, data=replace(config.data, source="files", dir=str(data)))
    return fit(config, out_dir, prepare_data(config.data, Path(out_dir)), log=log)


# ---- CLI ------------------------------------------------------------------------------------------------

def _on_off(value: str) -> bool:
    if value.lower() in ("on", "true", "1", "yes"):
        return True
    if value.lower() in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on/off, got {value!r}")


def _int_list(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from exc


# CLI flag -> (section, key, type): one flag per ablation axis and per common hyper-parameter.
OVERRIDES: dict[str, tuple[str, str, Any]] = {
    "num_stages": ("model", "num_stages", int),
    "patch_sizes": ("model", "patch_sizes", _int_list),
    "cross_stage_attention": ("model", "cross_stage_attention", _on_off),
    "cross_stage_scope": ("model", "cross_stage_scope", str),
    "deep_supervision": ("model", "deep_supervision", _on_off),
    "share_stage_params": ("model", "share_stage_params", _on_off),
    "skip_connections": ("model", "skip_connections", str),
    "spatial_encoding": ("model", "spatial_encoding", str),
    "predict_residual": ("model", "predict_residual", _on_off),
    "d_model": ("model", "d_model", int),
    "dropout": ("model", "dropout", float),
    "day_of_week": ("data", "use_day_of_week", _on_off),
    "nodes": ("data", "nodes", int),
    "days": ("data", "days", int),
    "epochs": ("train", "epochs", int),
    "batch_size": ("train", "batch_size", int),
    "lr": ("train", "lr", float),
    "patience": ("train", "patience", int),
    "seed": ("train", "seed", int),
    "threads": ("train", "threads", int),
    "device": ("train", "device", str),
    "max_batches_per_epoch": ("train", "max_batches_per_epoch", int),
    "time_budget_s": ("train", "time_budget_s", float),
    "amp": ("train", "amp", _on_off),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the traffic forecaster (METR-LA format data).")
    parser.add_argument("--config", default="quick", help="preset name (quick, deep, fallback, tiny) or YAML path")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, help="directory with <name>.h5 + adj_mx.pkl (else synthetic)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/latest.pt")
    choices = {"cross_stage_scope": ["full", "node"], "skip_connections": ["none", "add", "concat"],
               "spatial_encoding": ["stepwise", "batched"]}
    for flag, (_, _, kind) in OVERRIDES.items():
        parser.add_argument(f"--{flag.replace('_', '-')}", type=kind, choices=choices.get(flag), default=None)
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrafficConfig:
    config = load_config(args.config)
    if args.data_dir is not None:
        config.data = replace(config.data, source="files", dir=str(args.data_dir))
    for flag, (section, key, _) in OVERRIDES.items():
        value = getattr(args, flag)
        if value is not None:
            setattr(getattr(config, section), key, value)
    config.train.resume = args.resume
    return config


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    summary = train(config_from_args(args), args.out).summary
    print(json.dumps({k: summary[k] for k in ("best_checkpoint", "best_epoch", "num_parameters",
                                              "seconds_per_epoch", "test")}, indent=2))


if __name__ == "__main__":
    main()
