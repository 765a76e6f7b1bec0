"""Train the tiny regressor on a synthetic linear target: `python -m training.tiny.train --out runs/tiny`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from training.checkpoints import save_atomic
from training.tiny.model import TinyConfig, TinyRegressor


def train(out_dir: Path, config: TinyConfig, steps: int = 200, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = TinyRegressor(config)
    target = torch.randn(config.in_features, config.out_features)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        x = torch.randn(64, config.in_features)
        y, _ = model(x)
        loss = torch.nn.functional.mse_loss(y, x @ target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = out_dir / "best.pt"
    save_atomic({"config": config.to_dict(), "state_dict": model.state_dict(),
                 "metrics": {"train_mse": loss.item()}, "seed": seed, "steps": steps}, checkpoint)
    (out_dir / "metrics.json").write_text(json.dumps({"train_mse": loss.item()}))
    return checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = TinyConfig(hidden=args.hidden, depth=args.depth, repeats=args.repeats)
    print(train(args.out, config, args.steps, args.seed))


if __name__ == "__main__":
    main()
