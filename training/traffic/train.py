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
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from families.traffic.preprocessing import STEP_SECONDS
from training.checkpoints import save_atomic
from training.threads import torch_threads
from training.traffic import synthetic
from training.traffic.baselines import baseline_predictions
from training.traffic.data import TrafficData, find_files, load_dataset
from training.traffic.metrics import horizon_table, masked_mae_torch
from training.traffic.model import TrafficForecaster, TrafficModelConfig, count_parameters

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CHECKPOINT_FORMAT = "traffic-checkpoint/1"
TRAIN_DEFAULTS: dict[str, Any] = {
    "batch_size": 32, "lr": 1e-3, "weight_decay": 0.0, "epochs": 50, "patience": 10, "grad_clip": 5.0,
    "seed": 0, "max_batches_per_epoch": None, "max_eval_batches": None, "time_budget_s": None, "threads": None,
    "eval_batch_size": 64, "device": "cpu", "test_max_batches": None, "amp": False,
}
DATA_DEFAULTS: dict[str, Any] = {
    "source": "synthetic", "dir": None, "nodes": 207, "days": 35, "seed": 0,
    "use_time_of_day": True, "use_day_of_week": False,
}


def load_config(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"config {name_or_path!r} not found (presets: {known})")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - {"model", "data", "train"}
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)}")
    return {
        "name": path.stem,
        "model": dict(raw.get("model", {})),
        "data": {**DATA_DEFAULTS, **raw.get("data", {})},
        "train": {**TRAIN_DEFAULTS, **raw.get("train", {})},
    }


def prepare_data(data_cfg: dict[str, Any], workdir: Path) -> TrafficData:
    """Real files from `dir`, or synthetic files generated once under workdir/data and read the same way."""
    if data_cfg["source"] == "files":
        speed_file, adj_file = find_files(Path(data_cfg["dir"]))
    elif data_cfg["source"] == "synthetic":
        target = workdir / "data"
        speed_file, adj_file = target / synthetic.SPEED_FILE, target / synthetic.ADJ_FILE
        stamp = target / "spec.json"
        spec = {k: data_cfg[k] for k in ("nodes", "days", "seed")}
        if not (speed_file.exists() and adj_file.exists() and stamp.exists() and json.loads(stamp.read_text()) == spec):
            synthetic.generate_files(target, num_nodes=spec["nodes"], num_days=spec["days"], seed=spec["seed"])
            stamp.write_text(json.dumps(spec))
    else:
        raise ValueError(f"data.source must be 'synthetic' or 'files', got {data_cfg['source']!r}")
    return load_dataset(speed_file, adj_file, data_cfg["use_time_of_day"], data_cfg["use_day_of_week"])


def build_model(config: dict[str, Any], data: TrafficData) -> TrafficForecaster:
    model_cfg = TrafficModelConfig.from_dict(
        {
            **config["model"],
            "num_nodes": data.num_nodes,
            "use_time_of_day": data.use_time_of_day,
            "use_day_of_week": data.use_day_of_week,
        }
    )
    return TrafficForecaster(model_cfg, data.adjacency, data.scaler.mean, data.scaler.std)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    return horizon_table(*predict(model, data, split, batch_size, max_batches))


def baseline_tables(data: TrafficData, split: str = "test",
                    limit: int | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Baseline tables on a split (or its first `limit` windows, to match a bounded model evaluation)."""
    return {name: horizon_table(p[:limit], y[:limit]) for name, (p, y) in baseline_predictions(data, split).items()}


def _checkpoint(model: TrafficForecaster, config: dict, data: TrafficData, state: dict) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "config": config,
        "model_config": model.cfg.to_dict(),
        "state_dict": model.state_dict(),
        "sensor_ids": list(data.sensor_ids),
        "scaler": {"mean": data.scaler.mean, "std": data.scaler.std},
        "features": data.feature_names,
        "step_seconds": STEP_SECONDS,
        "data": data.description(),
        "num_parameters": count_parameters(model),
        **state,
    }


def load_checkpoint(path: Path) -> tuple[TrafficForecaster, dict[str, Any]]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a traffic checkpoint (format {checkpoint.get('format')!r})")
    cfg = TrafficModelConfig.from_dict(checkpoint["model_config"])
    scaler = checkpoint["scaler"]
    model = TrafficForecaster(cfg, None, scaler["mean"], scaler["std"])
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return model, checkpoint


def training_step(model: TrafficForecaster, optimizer: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor,
                  amp: bool = False, grad_clip: float = 0.0) -> torch.Tensor:
    """One optimiser step; returns the final stage's prediction (detached, mph)."""
    # bf16 autocast on GPU lets SDPA take its fused kernels (the cross-stage attention is long)
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


def train(config: dict[str, Any], out_dir: Path, data: TrafficData | None = None, resume: bool = False,
          log: bool = True) -> dict[str, Any]:
    """Train per `config`; returns a summary (paths, best validation MAE, test tables, seconds per epoch)."""
    with torch_threads(config["train"].get("threads")):
        return _train(config, Path(out_dir), data, resume, log)


def _train(config: dict[str, Any], out_dir: Path, data: TrafficData | None, resume: bool, log: bool) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    tcfg = config["train"]
    seed_everything(int(tcfg["seed"]))
    data = data if data is not None else prepare_data(config["data"], out_dir)
    device = torch.device(tcfg.get("device") or "cpu")
    amp = bool(tcfg.get("amp")) and device.type == "cuda"  # training only; evaluation stays FP32
    model = build_model(config, data).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))

    state = {"epoch": 0, "best_val_mae": math.inf, "best_epoch": 0, "bad_epochs": 0, "history": []}
    latest, best = out_dir / "latest.pt", out_dir / "best.pt"
    if resume and latest.exists():
        checkpoint = torch.load(latest, map_location="cpu", weights_only=False)
        model.load_state_dict(checkpoint["state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["torch_rng"])
        state = {k: checkpoint[k] for k in state}
        if log:
            print(f"resumed from {latest} at epoch {state['epoch']}")

    train_anchors = len(data.anchors["train"])
    batch_size = int(tcfg["batch_size"])
    started = time.perf_counter()
    log_path = out_dir / "metrics.jsonl"
    while state["epoch"] < int(tcfg["epochs"]) and state["bad_epochs"] < int(tcfg["patience"]):
        epoch = state["epoch"] + 1
        epoch_start = time.perf_counter()
        model.train()
        order = np.random.default_rng(int(tcfg["seed"]) * 1000 + epoch).permutation(train_anchors)
        batches = range(0, train_anchors, batch_size)
        if tcfg.get("max_batches_per_epoch"):
            batches = batches[: int(tcfg["max_batches_per_epoch"])]
        losses = []
        budget = float(tcfg["time_budget_s"]) if tcfg.get("time_budget_s") else None
        out_of_time = False
        for start in batches:
            if budget is not None and losses and time.perf_counter() - started > budget:
                out_of_time = True  # bounded wall time (default model): validate and save what we have
                break
            x, y = data.windows("train", order[start : start + batch_size])
            target = torch.from_numpy(y).to(device)
            final = training_step(model, optimizer, torch.from_numpy(x).to(device), target, amp,
                                  float(tcfg.get("grad_clip") or 0.0))
            losses.append(masked_mae_torch(final, target).item())
        train_seconds = time.perf_counter() - epoch_start
        val = evaluate_table(model, data, "val", int(tcfg["eval_batch_size"]), tcfg.get("max_eval_batches"))
        val_mae = val["average"]["mae"]
        improved = val_mae < state["best_val_mae"]
        state.update(epoch=epoch)
        if improved:
            state.update(best_val_mae=val_mae, best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        record = {
            "epoch": epoch, "train_mae": float(np.mean(losses)), "val_mae": val_mae,
            "val_rmse": val["average"]["rmse"], "val_mape": val["average"]["mape"],
            "lr": optimizer.param_groups[0]["lr"], "train_seconds": train_seconds,
            "epoch_seconds": time.perf_counter() - epoch_start, "batches": len(losses),
            "complete": len(losses) == len(batches),
        }
        state["history"].append(record)
        with log_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if log:
            print(json.dumps(record))
        extra = {**copy.deepcopy(state), "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
        checkpoint = _checkpoint(model, config, data, extra)
        save_atomic(checkpoint, latest)
        if improved:
            save_atomic(checkpoint, best)
        if out_of_time or (budget is not None and time.perf_counter() - started > budget):
            break

    best_model, best_checkpoint = load_checkpoint(best)
    best_model.to(device)
    # The whole test split unless `test_max_batches` bounds it (the time-boxed default model only).
    test_batches = tcfg.get("test_max_batches")
    test = evaluate_table(best_model, data, "test", int(tcfg["eval_batch_size"]), test_batches)
    test_windows = len(data.anchors["test"]) if not test_batches else min(
        len(data.anchors["test"]), int(test_batches) * int(tcfg["eval_batch_size"]))
    tables = {"model": test, **baseline_tables(data, "test", test_windows)}
    # seconds per full epoch (a budget-truncated last epoch is left out), and per training batch
    seconds = [r["train_seconds"] for r in state["history"] if r.get("complete", True)]
    per_batch = [r["train_seconds"] / max(r["batches"], 1) for r in state["history"]]
    summary = {
        "config": config["name"], "best_checkpoint": str(best), "latest_checkpoint": str(latest),
        "best_epoch": state["best_epoch"], "epochs": state["epoch"], "best_val_mae": state["best_val_mae"],
        "num_parameters": count_parameters(best_model),
        "seconds_per_epoch": float(np.mean(seconds)) if seconds else None,
        "seconds_per_batch": float(np.mean(per_batch)) if per_batch else None,
        "wall_seconds": time.perf_counter() - started, "data": data.description(), "test_windows": test_windows,
        "test": tables,
    }
    best_checkpoint["metrics"] = {"test": tables, "test_windows": test_windows}
    save_atomic(best_checkpoint, best)
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


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


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(args.config)
    if args.data_dir is not None:
        config["data"].update(source="files", dir=str(args.data_dir))
    for flag, (section, key, _) in OVERRIDES.items():
        value = getattr(args, flag)
        if value is not None:
            config[section][key] = value
    return config


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    summary = train(config_from_args(args), args.out, resume=args.resume)
    print(json.dumps({k: summary[k] for k in ("best_checkpoint", "best_epoch", "num_parameters",
                                              "seconds_per_epoch", "test")}, indent=2))


if __name__ == "__main__":
    main()
