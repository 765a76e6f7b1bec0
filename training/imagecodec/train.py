"""Train the codec with the rate-distortion loss: python -m training.imagecodec.train --quality 3 --out runs/ic

One run = one quality level (one lambda) = one exported model version. Random crops/flips from the
scikit-image photographs by default, or from --images DIR.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from training.checkpoints import save_atomic
from training.imagecodec.config import CodecConfig, hpcm_base_config, small_config, tiny_config
from training.imagecodec.data import RandomCrops, folder_images, skimage_photos
from training.imagecodec.model import ImageCodec, count_parameters, rd_loss

# CompressAI's MSE lambdas; quality level q uses LAMBDAS[q].
LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.013, 5: 0.025, 6: 0.0483}
SIZES = {"tiny": tiny_config, "small": small_config, "base": hpcm_base_config}


def train(out_dir: Path, quality: int = 3, size: str = "small", phase: str = "phase2", steps: int = 2000,
          seconds: float | None = None, batch: int = 8, crop: int = 128, lr: float = 1e-3, seed: int = 0,
          images: Path | None = None, device: str = "cpu", config: CodecConfig | None = None,
          lmbda: float | None = None, log_every: int = 50, init: Path | None = None) -> Path:
    """Train one quality level and write `out_dir/checkpoint.pt`; returns its path."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    cfg = config or SIZES[size](phase=phase)
    lmbda = lmbda if lmbda is not None else LAMBDAS[quality]
    photos = folder_images(images) if images else skimage_photos()
    crops = RandomCrops(list(photos.values()), crop, seed=seed)
    model = ImageCodec(cfg)
    earlier = None
    if init is not None:  # continue from an earlier run of the same config
        start_from = torch.load(init, map_location="cpu", weights_only=False)
        model.load_state_dict(start_from["state_dict"])
        earlier = start_from.get("provenance", {}).get("training")  # the chain of earlier rounds
    model = model.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, [int(steps * 0.8), int(steps * 0.95)], 0.3)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    history = []
    step = 0
    model.train()
    while step < steps and (seconds is None or time.perf_counter() - start < seconds):
        x = crops.batch(batch).to(device)
        losses = rd_loss(model(x), x, lmbda)
        optimiser.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        if seconds is None:
            schedule.step()
        else:  # time-budgeted run: decay at 80% / 95% of the budget
            frac = (time.perf_counter() - start) / seconds
            for group in optimiser.param_groups:
                group["lr"] = lr * (0.3 if frac > 0.8 else 1.0) * (0.3 if frac > 0.95 else 1.0)
        step += 1
        if step % log_every == 0 or step == 1:
            row = {"step": step, "seconds": round(time.perf_counter() - start, 1),
                   **{k: round(float(v.detach()), 5) for k, v in losses.items()}}
            psnr = -10 * np.log10(max(row["mse"], 1e-10))
            row["psnr"] = round(float(psnr), 2)
            history.append(row)
            print(json.dumps(row), flush=True)
    model = model.cpu().eval()
    checkpoint = out_dir / "checkpoint.pt"
    save_atomic({
        "config": cfg.to_dict(), "state_dict": model.state_dict(), "quality": quality, "lambda": lmbda,
        "provenance": {
            "training": {"steps": step, "seconds": round(time.perf_counter() - start, 1), "batch": batch,
                         "crop": crop, "lr": lr, "seed": seed, "device": device, "lambda": lmbda,
                         "quality": quality, "phase": cfg.phase, "size": size, "continued_from": earlier},
            "data": str(images) if images else "scikit-image bundled photographs: " + ", ".join(sorted(photos)),
            "parameters": count_parameters(model),
            "history": history[-5:],
        },
    }, checkpoint)
    return checkpoint


def load_checkpoint(path: Path) -> tuple[ImageCodec, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = ImageCodec(CodecConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def main() -> None:
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
    args = parser.parse_args()
    path = train(args.out, args.quality, args.size, args.phase, args.steps, args.seconds, args.batch, args.crop,
                 args.lr, args.seed, args.images, args.device, lmbda=args.lmbda, init=args.init)
    print(f"checkpoint: {path}")


if __name__ == "__main__":
    main()
