"""Train the tiny regressor on a synthetic linear target: `python -m training.tiny.train --out runs/tiny`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from training import loop
from training.checkpoints import Checkpoint, TrainResult, read_checkpoint
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


class TinyTask(loop.Task):
    """Fit y = x @ W for a random W on fresh random batches; the score is the last step's training MSE
    (the target is known, there is no held-out set to speak of)."""

    def __init__(self, config: TinyConfig) -> None:
        self.config = config
        self.model = TinyRegressor(config.model)
        self.weights = torch.randn(config.model.in_features, config.model.out_features)
        self.optimiser = loop.make_optimiser(self.model.parameters(), "adam", config.lr)
        self.loss = float("nan")

    def step(self, index: int) -> dict[str, float]:
        x = torch.randn(self.config.batch_size, self.config.model.in_features)
        return {"mse": training_step(self.model, self.optimiser, x, x @ self.weights)}

    def validate(self, progress: loop.Progress) -> float:
        self.loss = progress.running[-1]["mse"] if progress.running else self.loss
        return self.loss

    def checkpoint(self, progress: loop.Progress, kind: str) -> dict[str, Any]:
        return {"config": self.config.model.to_dict(), "state_dict": self.model.state_dict(),
                "metrics": {"train_mse": self.loss}, "training": asdict(self.config)}

    def identity(self) -> dict[str, Any]:
        return {"model": self.config.model.to_dict(), "batch_size": self.config.batch_size, "lr": self.config.lr,
                "seed": self.config.seed}

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss = state["loss"]


def train(config: TinyConfig, out_dir: Path, data: Path | None = None, *,
          log: Callable[[str], None] | None = print) -> TrainResult:
    """Fit y = x @ W for a random W; the tiny family has no dataset (`data` must be None)."""
    if data is not None:
        raise ValueError("the tiny family trains on its synthetic target only: pass data=None")
    out_dir = Path(out_dir)
    loop.seed_everything(config.seed)
    task = TinyTask(config)
    settings = loop.LoopConfig(steps=config.steps, seconds=config.seconds, threads=config.threads,
                               save_every_s=config.save_every_s, resume=config.resume, latest=None)
    outcome = loop.run(task, settings, out_dir, FAMILY, log=log)
    metrics = {"train_mse": task.loss}
    if outcome.finished:
        (out_dir / "metrics.json").write_text(json.dumps(metrics))
    if log:
        log(f"tiny: {outcome.progress.step} steps, train MSE {task.loss:.4f} -> {out_dir / 'best.pt'}")
    return TrainResult(best_checkpoint=out_dir / "best.pt", out_dir=out_dir,
                       summary={**metrics, "steps": outcome.progress.step, "finished": outcome.finished})


def load_checkpoint(path: Path) -> Checkpoint:
    payload = read_checkpoint(path, FAMILY, legacy=lambda p: {"config", "state_dict"} <= p.keys())
    config = TinyModelConfig.from_dict(payload["config"])
    model = TinyRegressor(config).eval()
    model.load_state_dict(payload["state_dict"])
    return Checkpoint(family=FAMILY, path=Path(path), model=model, config=config,
                      extras={"metrics": payload.get("metrics", {})})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    loop.add_flags(parser)
    parser.add_argument("--preset", default="default", help="default | slow")
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--depth", type=int)
    parser.add_argument("--repeats", type=int)
    args = parser.parse_args(argv)
    config = load_config(args.preset)
    model = {name: getattr(args, name) for name in ("hidden", "depth", "repeats") if getattr(args, name) is not None}
    config = replace(config, model=replace(config.model, **model), **loop.given_flags(args, {}))
    print(train(config, args.out, log=None).best_checkpoint)


if __name__ == "__main__":
    main()
