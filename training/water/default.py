"""Default water model served by `make serve`: the small config trained on synthetic data (fixed seeds).

The shipped default is a GPU-trained checkpoint, `models/water/water-small.pt` (small config with the
gap-filling prior, 1561 steps of batch 64 in 322 s on one H100; 3.1 MB), reproduced by

    RUNS=water bash benchmarks/gpu_figures.sh runs/gpu     # then copy runs/gpu/water/best.pt

A first start on CPU could only afford ~300 steps, which beat the interpolation baselines by a thinner
margin. Without the shipped file (or with `use_shipped=False`) the bounded CPU run below trains one:

    python -m training.water.default runs/water-default   # prints the checkpoint path
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from training.checkpoints import save_checkpoint
from training.threads import torch_threads
from training.water.config import TrainingConfig, small_model
from training.water.data import generate
from training.water.evaluate import evaluate
from training.water.train import FAMILY, checkpoint_payload, fit, load_checkpoint, read_payload, synthetic_splits

# 300 steps; the time limit is a safety cap on a busy machine, the step count is the normal stop.
TRAINING = TrainingConfig(steps=300, batch_size=32, lr=1e-3, seed=0, eval_every=100, time_limit_s=75.0,
                          n_train=1024, n_val=64)
N_EVAL = 64
SHIPPED = Path(__file__).resolve().parents[2] / "models" / "water" / "water-small.pt"


def build_default(workdir: Path, use_shipped: bool = True) -> Path:
    """The default model's checkpoint (accepted by export.families.water), with its held-out evaluation."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with torch_threads(1):  # many small matmuls: one thread is faster than two on a small shared CPU
        start = time.perf_counter()
        if use_shipped and SHIPPED.exists():
            payload = read_payload(SHIPPED)
            shipped = load_checkpoint(SHIPPED)
            model, stats, climatology = shipped.model, shipped.extras["stats"], shipped.extras["climatology"]
        else:
            cfg, seed, n_train, n_val = small_model(), TRAINING.seed, TRAINING.n_train, TRAINING.n_val
            description = (f"synthetic (training.water.data.generate seed {seed}: {n_train} train / {n_val} val, "
                           f"grid {cfg.height}x{cfg.width}, T={cfg.frames}, T_v={cfg.series_len})")
            result = fit(cfg, *synthetic_splits(cfg, n_train, n_val, seed), TRAINING, data_description=description)
            model, stats, climatology = result.model, result.stats, result.climatology
            payload = checkpoint_payload(result, description, TRAINING)
        held_out = generate(N_EVAL, model.cfg.height, model.cfg.width, model.cfg.frames, model.cfg.series_len,
                            seed=TRAINING.seed + 100)
        evaluation = evaluate(model, stats, climatology, held_out, seed=TRAINING.seed)
        payload["evaluation"] = {s: {m: v["mse"] for m, v in per.items()} for s, per in evaluation.items()}
        payload["metrics"]["build_seconds"] = round(time.perf_counter() - start, 1)
        return save_checkpoint(FAMILY, payload, workdir / "best.pt")


if __name__ == "__main__":
    print(build_default(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/water-default")))
