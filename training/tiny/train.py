"""Train the tiny regressor on a synthetic linear target: `python -m training.tiny.train --out runs/tiny`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from training.checkpoints import Checkpoint, TrainResult, read_checkpoint, save_checkpoint
from training.tiny.config import TinyConfig, TinyModelConfig, load_config
from training.tiny.model import TinyRegressor

FAMILY = "tiny"


def training_step(model: TinyRegressor, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                  target: torch.Tensor) -> float:
    y, _ = model(x)
    loss = torch.nn.functional.mse_loss(y, target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def train(config: TinyConfig, out_dir: Path, data: Path | None = None, *,
          log: Callable[[str], None] | None = print) -> TrainResult:
    """Fit y = x @ W for a random W; the tiny family has no dataset (`data` must be None)."""
    if data is not None:
        raise ValueError("the tiny family trains on its synthetic target only: pass data=None")
    torch.manual_seed(config.seed)
    model = TinyRegressor(config.model)
    weights = torch.randn(config.model.in_features, config.model.out_features)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss = float("nan")
    for _ in range(config.steps):
        x = torch.randn(config.batch_size, config.model.in_features)
        loss = training_step(model, optimizer, x, x @ weights)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"train_mse": loss}
    checkpoint = save_checkpoint(FAMILY, {"config": config.model.to_dict(), "state_dict": model.state_dict(),
                                          "metrics": metrics, "training": asdict(config)}, out_dir / "best.pt")
    (out_dir / "metrics.json").write_text(json.dumps(metrics))
    if log:
        log(f"tiny: {config.steps} steps, train MSE {loss:.4f} -> {checkpoint}")
    return TrainResult(best_checkpoint=checkpoint, out_dir=out_dir, summary=metrics)


def load_checkpoint(path: Path) -> Checkpoint:
    payload = read_checkpoint(path, FAMILY, legacy=lambda p: {"config", "state_dict"} <= p.keys())
    config = TinyModelConfig.from_dict(payload["config"])
    model = TinyRegressor(config).eval()
    model.load_state_dict(payload["state_dict"])
    return Checkpoint(family=FAMILY, path=Path(path), model=model, config=config,
                      extras={"metrics": payload.get("metrics", {})})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="default", help="default | slow")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--depth", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    config = load_config(args.preset)
    for name in ("hidden", "depth", "repeats"):
        if getattr(args, name) is not None:
            setattr(config.model, name, getattr(args, name))
    for name in ("steps", "seed"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    print(train(config, args.out, log=None).best_checkpoint)


if __name__ == "__main__":
    main()
