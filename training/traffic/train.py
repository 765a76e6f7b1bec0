"""Train the traffic forecaster.

    python -m training.traffic.train --config quick --out runs/traffic-quick
    python -m training.traffic.train --config fallback --data-dir data/METR-LA --out runs/phase1
    python -m training.traffic.train --config quick --num-stages 4 --patch-sizes 1,2 --cross-stage-attention off
    python -m training.traffic.train --config quick --out runs/traffic-quick --resume   # continue train_state.pt

Writes to --out: `latest.pt` (every epoch), `best.pt` (lowest validation masked MAE), `train_state.pt` (every
epoch, every --save-every seconds and on SIGTERM / SIGINT: what --resume continues exactly, mid-epoch too),
`metrics.jsonl` (one JSON object per epoch), `metrics.json` (the test-split horizon table of best.pt next to
the last-value and historical-average baselines) and `config.json`. The loop is training/loop.py's.
Without --data-dir the synthetic generator writes METR-LA-format files into <out>/data and the same
loader reads them.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from families.traffic.preprocessing import STEP_SECONDS
from training import loop
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


def build_model(config: TrafficConfig, data: TrafficData) -> TrafficForecaster:
    model_cfg = config.for_data(data.num_nodes, data.use_time_of_day, data.use_day_of_week)
    return TrafficForecaster(model_cfg, data.adjacency, data.scaler.mean, data.scaler.std)


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


class TrafficTask(loop.Task):
    """Epochs of shuffled training windows (the order of epoch e is fixed by the seed and e, so a run resumed
    mid-epoch takes the same batches), validated on the masked MAE of the validation split after each."""

    def __init__(self, config: TrafficConfig, data: TrafficData, out_dir: Path, log: Log) -> None:
        tcfg = config.train
        self.data, self.tcfg, self.out_dir, self.log = data, tcfg, out_dir, log
        self.model = build_model(config, data).to(torch.device(tcfg.device or "cpu"))
        self.config = replace(config, model=self.model.cfg)  # what config.json and the checkpoints record
        self.optimiser = loop.make_optimiser(self.model.parameters(), "adamw", tcfg.lr, weight_decay=tcfg.weight_decay)
        batches = range(0, len(data.anchors["train"]), tcfg.batch_size)
        self.steps_per_epoch = len(batches[: tcfg.max_batches_per_epoch] if tcfg.max_batches_per_epoch else batches)
        self.history: list[dict[str, Any]] = []  # one record per epoch (metrics.jsonl)
        self._order: tuple[int, np.ndarray] | None = None
        self._epoch_started = time.perf_counter()
        self._record: dict[str, Any] = {}

    def epoch(self, step: int) -> int:
        """The 1-based epoch that step `step` (1-based: steps done) ends or falls in."""
        return -(-step // self.steps_per_epoch)

    def step(self, index: int) -> dict[str, float]:
        epoch, position = divmod(index, self.steps_per_epoch)
        epoch += 1
        if self._order is None or self._order[0] != epoch:
            rng = np.random.default_rng(self.tcfg.seed * 1000 + epoch)
            self._order = (epoch, rng.permutation(len(self.data.anchors["train"])))
        start = position * self.tcfg.batch_size
        x, y = self.data.windows("train", self._order[1][start : start + self.tcfg.batch_size])
        device = next(self.model.parameters()).device
        target = torch.from_numpy(y).to(device)
        self.model.train()
        # amp for training only; evaluation stays FP32 (on CPU bf16 needs AMX/AVX512-BF16 to pay)
        final = training_step(self.model, self.optimiser, torch.from_numpy(x).to(device), target, self.tcfg.amp,
                              self.tcfg.grad_clip or 0.0)
        return {"mae": masked_mae_torch(final, target).item()}

    def validate(self, progress: loop.Progress) -> float:
        train_seconds = time.perf_counter() - self._epoch_started
        val = evaluate_table(self.model, self.data, "val", self.tcfg.eval_batch_size,
                             self.tcfg.max_eval_batches)["average"]
        batches = len(progress.running)
        self._record = {
            "epoch": self.epoch(progress.step), "train_mae": float(np.mean([r["mae"] for r in progress.running])),
            "val_mae": val["mae"], "val_rmse": val["rmse"], "val_mape": val["mape"],
            "lr": self.optimiser.param_groups[0]["lr"], "train_seconds": train_seconds,
            "epoch_seconds": time.perf_counter() - self._epoch_started, "batches": batches,
            "complete": batches == self.steps_per_epoch,
        }
        self.history.append(self._record)
        return val["mae"]

    def checkpoint(self, progress: loop.Progress, kind: str) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "model_config": self.model.cfg.to_dict(),
            "state_dict": self.model.state_dict(),
            "sensor_ids": list(self.data.sensor_ids),
            "scaler": {"mean": self.data.scaler.mean, "std": self.data.scaler.std},
            "features": self.data.feature_names,
            "step_seconds": STEP_SECONDS,
            "data": self.data.description(),
            "num_parameters": count_parameters(self.model),
            "epoch": self.epoch(progress.step), "best_val_mae": progress.best_score,
            "best_epoch": self.epoch(progress.best_step), "bad_epochs": progress.stale,
            "history": copy.deepcopy(self.history),
            "optimizer": self.optimiser.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def validated(self, progress: loop.Progress, improved: bool) -> None:
        with (self.out_dir / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(self._record) + "\n")
        if self.log:
            self.log(json.dumps(self._record))
        self._epoch_started = time.perf_counter()

    def identity(self) -> dict[str, Any]:
        return {"model": self.model.cfg.to_dict(), "data": asdict(self.config.data),
                "batch_size": self.tcfg.batch_size, "lr": self.tcfg.lr, "weight_decay": self.tcfg.weight_decay,
                "seed": self.tcfg.seed, "steps_per_epoch": self.steps_per_epoch}

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = state["history"]


def loop_config(tcfg: TrainConfig, steps_per_epoch: int) -> loop.LoopConfig:
    """Validation and latest.pt once per epoch; early stopping after `patience` epochs without a better
    validation MAE; the time budget and `max_steps` may end the run mid-epoch (it is validated then)."""
    steps = tcfg.epochs * steps_per_epoch
    return loop.LoopConfig(steps=min(steps, tcfg.max_steps) if tcfg.max_steps else steps, seconds=tcfg.time_budget_s,
                           eval_every=steps_per_epoch, patience=tcfg.patience, save_every_s=tcfg.save_every_s,
                           threads=tcfg.threads, resume=tcfg.resume, best=BEST, latest=LATEST)


def state_from_latest(task: TrafficTask, out_dir: Path) -> None:
    """Write the train_state.pt of a run from before the loop kept one: where its latest.pt ends (an epoch)."""
    payload = _read(out_dir / LATEST)
    task.model.load_state_dict(payload["state_dict"])
    task.optimiser.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["torch_rng"])
    task.history = payload["history"]
    step = payload["epoch"] * task.steps_per_epoch
    progress = loop.Progress(step=step, best_score=payload["best_val_mae"], stale=payload["bad_epochs"],
                             best_step=payload["best_epoch"] * task.steps_per_epoch, validated_step=step)
    loop.save_state(out_dir / loop.STATE, FAMILY, task, progress)


def evaluate_best(config: TrafficConfig, data: TrafficData, task: TrafficTask, progress: loop.Progress,
                  out_dir: Path) -> dict[str, Any]:
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
    seconds = [r["train_seconds"] for r in task.history if r.get("complete", True)]
    per_batch = [r["train_seconds"] / max(r["batches"], 1) for r in task.history]
    summary = {
        "config": config.name, "best_checkpoint": str(out_dir / BEST), "latest_checkpoint": str(out_dir / LATEST),
        "best_epoch": task.epoch(progress.best_step), "epochs": task.epoch(progress.step),
        "best_val_mae": progress.best_score, "num_parameters": count_parameters(model),
        "seconds_per_epoch": float(np.mean(seconds)) if seconds else None,
        "seconds_per_batch": float(np.mean(per_batch)) if per_batch else None,
        "wall_seconds": progress.seconds, "data": data.description(), "test_windows": windows,
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
    with torch_threads(config.train.threads):
        loop.seed_everything(config.train.seed)
        task = TrafficTask(config, data, out_dir, log)
        (out_dir / "config.json").write_text(json.dumps(task.config.to_dict(), indent=2))
        if config.train.resume and not (out_dir / loop.STATE).exists() and (out_dir / LATEST).exists():
            state_from_latest(task, out_dir)
        outcome = loop.run(task, loop_config(config.train, task.steps_per_epoch), out_dir, FAMILY, log=log)
        if not outcome.finished:
            return TrainResult(best_checkpoint=out_dir / BEST, out_dir=out_dir,
                               summary={"finished": False, "step": outcome.progress.step,
                                        "state": str(out_dir / loop.STATE)})
        summary = evaluate_best(task.config, data, task, outcome.progress, out_dir)
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


# CLI flag -> (section, key, type): one flag per ablation axis and per common hyper-parameter (the loop's
# flags, --seed --steps --seconds --threads --save-every --resume, come from training.loop).
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
    "device": ("train", "device", str),
    "max_batches_per_epoch": ("train", "max_batches_per_epoch", int),
    "amp": ("train", "amp", _on_off),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the traffic forecaster (METR-LA format data).")
    parser.add_argument("--config", default="quick", help="preset name (quick, deep, fallback, tiny) or YAML path")
    loop.add_flags(parser, aliases={"seconds": ["--time-budget-s"]},
                   help={"steps": "stop after this many optimiser steps (default: the epochs decide)"})
    parser.add_argument("--data-dir", type=Path, help="directory with <name>.h5 + adj_mx.pkl (else synthetic)")
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
    config.train = replace(config.train, **loop.given_flags(args, {"seconds": "time_budget_s", "steps": "max_steps"}))
    return config


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    summary = train(config_from_args(args), args.out).summary
    if not summary.get("finished", True):
        print(json.dumps(summary))
        return
    print(json.dumps({k: summary[k] for k in ("best_checkpoint", "best_epoch", "num_parameters",
                                              "seconds_per_epoch", "test")}, indent=2))


if __name__ == "__main__":
    main()
