"""Train the codec with the rate-distortion loss: python -m training.imagecodec.train --quality 3 --out runs/ic

One run = one quality level (one lambda) = one exported model version. Random crops/flips from the
scikit-image photographs by default, or from --images DIR.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.checkpoints import FAMILY_KEY, Checkpoint, TrainResult, read_checkpoint, save_checkpoint
from training.imagecodec.config import LAMBDAS, SIZES, CodecConfig, ImageCodecConfig, load_config
from training.imagecodec.data import RandomCrops, folder_images, skimage_photos
from training.imagecodec.model import ImageCodec, count_parameters, rd_loss

FAMILY = "imagecodec"
CHECKPOINT = "checkpoint.pt"
HISTORY_KEPT = 5  # log rows the checkpoint's provenance keeps
Log = Callable[[str], None] | None
Schedule = torch.optim.lr_scheduler.LRScheduler


# ---- checkpoints ----------------------------------------------------------------------------------------

def _is_legacy(payload: dict[str, Any]) -> bool:
    """A codec checkpoint from before the family tag: weights and a codec config (widths, M, N)."""
    config = payload.get("config")
    return "state_dict" in payload and isinstance(config, dict) and {"widths", "M", "N"} <= config.keys()


def read_payload(path: Path) -> dict[str, Any]:
    """The raw checkpoint dict (refused unless it is a codec's); untagged files are recognised by their keys."""
    return read_checkpoint(Path(path), FAMILY, legacy=_is_legacy)


def model_of(payload: dict[str, Any]) -> ImageCodec:
    """The checkpoint's model in eval mode on the CPU (float16 stored weights come back as float32)."""
    model = ImageCodec(CodecConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def load_checkpoint(path: Path) -> Checkpoint:
    """The eval-mode model, its `CodecConfig`, and in `extras` the rest of the file: `quality` and `lambda`
    (None when the file has none) and `provenance` (training settings, data, history)."""
    payload = read_payload(path)
    extras = {k: v for k, v in payload.items() if k not in ("config", "state_dict", FAMILY_KEY)}
    extras.setdefault("quality", None)
    extras.setdefault("lambda", None)
    return Checkpoint(family=FAMILY, path=Path(path), model=model_of(payload),
                      config=CodecConfig.from_dict(payload["config"]), extras=extras)


def checkpoint_payload(model: ImageCodec, config: ImageCodecConfig, *, steps: int, seconds: float,
                       data_description: str, history: list[dict[str, Any]],
                       earlier: dict[str, Any] | None) -> dict[str, Any]:
    """The checkpoint's content (`save_checkpoint` adds the family tag)."""
    return {
        "config": model.cfg.to_dict(), "state_dict": model.state_dict(), "quality": config.quality,
        "lambda": config.lambda_,
        "provenance": {
            "training": {"steps": steps, "seconds": round(seconds, 1), "batch": config.batch, "crop": config.crop,
                         "lr": config.lr, "seed": config.seed, "device": config.device, "lambda": config.lambda_,
                         "quality": config.quality, "phase": model.cfg.phase, "size": config.size,
                         "continued_from": earlier},
            "data": data_description,
            "parameters": count_parameters(model),
            "history": history[-HISTORY_KEPT:],
        },
    }


# ---- training -------------------------------------------------------------------------------------------

def make_optimiser(model: ImageCodec, config: ImageCodecConfig) -> tuple[torch.optim.Optimizer, Schedule]:
    """Adam; the learning rate drops by 0.3 at 80 % and again at 95 % of the steps (or of the time budget)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps = config.steps
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, [int(steps * 0.8), int(steps * 0.95)], 0.3)
    return optimiser, schedule


def training_step(model: ImageCodec, optimiser: torch.optim.Optimizer, x: torch.Tensor,
                  lmbda: float) -> dict[str, float]:
    """One optimiser step of the rate-distortion loss on the batch `x`; returns loss, bpp and mse."""
    model.train()
    losses = rd_loss(model(x), x, lmbda)
    optimiser.zero_grad(set_to_none=True)
    losses["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimiser.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def schedule_step(optimiser: torch.optim.Optimizer, schedule: Schedule, config: ImageCodecConfig,
                  elapsed: float) -> None:
    """Advance the learning-rate schedule: by steps, or for a time-budgeted run by the share of the budget."""
    if config.seconds is None:
        schedule.step()
        return
    frac = elapsed / config.seconds
    for group in optimiser.param_groups:
        group["lr"] = config.lr * (0.3 if frac > 0.8 else 1.0) * (0.3 if frac > 0.95 else 1.0)


def log_row(step: int, elapsed: float, losses: dict[str, float]) -> dict[str, Any]:
    """One history entry: the step's losses and the PSNR its mse means."""
    row: dict[str, Any] = {"step": step, "seconds": round(elapsed, 1), **{k: round(v, 5) for k, v in losses.items()}}
    row["psnr"] = round(float(-10 * np.log10(max(row["mse"], 1e-10))), 2)
    return row


def _continued(model: ImageCodec, init: str | None) -> dict[str, Any] | None:
    """Load the weights of the run to continue (same config); its training provenance (the chain of rounds)."""
    if init is None:
        return None
    start_from = read_payload(Path(init))
    model.load_state_dict(start_from["state_dict"])
    return start_from.get("provenance", {}).get("training")


def train(config: ImageCodecConfig, out_dir: Path, data: Path | None = None, *, log: Log = print) -> TrainResult:
    """Train one quality level on random crops of the images in the folder `data` (None: the photographs
    bundled with scikit-image) and write `out_dir/checkpoint.pt`."""
    out_dir = Path(out_dir)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    photos = folder_images(Path(data)) if data else skimage_photos()
    crops = RandomCrops(list(photos.values()), config.crop, seed=config.seed)
    model = ImageCodec(config.model)
    earlier = _continued(model, config.init)
    model = model.to(config.device)
    optimiser, schedule = make_optimiser(model, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    history: list[dict[str, Any]] = []
    step = 0
    while step < config.steps and (config.seconds is None or time.perf_counter() - start < config.seconds):
        losses = training_step(model, optimiser, crops.batch(config.batch).to(config.device), config.lambda_)
        schedule_step(optimiser, schedule, config, time.perf_counter() - start)
        step += 1
        if step % config.log_every == 0 or step == 1:
            history.append(log_row(step, time.perf_counter() - start, losses))
            if log:
                log(json.dumps(history[-1]))
    model = model.cpu().eval()
    seconds = time.perf_counter() - start
    description = str(data) if data else "scikit-image bundled photographs: " + ", ".join(sorted(photos))
    payload = checkpoint_payload(model, config, steps=step, seconds=seconds, data_description=description,
                                 history=history, earlier=earlier)
    checkpoint = save_checkpoint(FAMILY, payload, out_dir / CHECKPOINT)
    summary = {"steps": step, "seconds": round(seconds, 1), "quality": config.quality, "lambda": config.lambda_,
               "parameters": count_parameters(model), "last": history[-1] if history else None}
    return TrainResult(best_checkpoint=checkpoint, out_dir=out_dir, summary=summary)


# ---- CLI ------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quality", type=int, default=3, choices=sorted(LAMBDAS))
    parser.add_argument("--lmbda", type=float, default=None, help="override the quality level's lambda")
    parser.add_argument("--size", default="small", choices=sorted(SIZES))
    parser.add_argument("--phase", default="phase2")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this wall time")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=Path, default=None, help="folder of training images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--init", type=Path, default=None, help="start from this checkpoint's weights")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> ImageCodecConfig:
    """The --size preset with the phase and the training flags given."""
    config = load_config(args.size)
    return replace(config, model=replace(config.model, phase=args.phase), quality=args.quality, lmbda=args.lmbda,
                   steps=args.steps, seconds=args.seconds, batch=args.batch, crop=args.crop, lr=args.lr,
                   seed=args.seed, device=args.device, init=str(args.init) if args.init else None)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = train(config_from_args(args), args.out, args.images, log=lambda line: print(line, flush=True))
    print(f"checkpoint: {result.best_checkpoint}")


if __name__ == "__main__":
    main()
