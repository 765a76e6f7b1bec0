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

from training.checkpoints import save_atomic
from training.threads import torch_threads
from training.water.config import small_config
from training.water.data import generate
from training.water.evaluate import evaluate
from training.water.train import checkpoint_dict, load_checkpoint, synthetic_splits, train

STEPS = 300
TIME_LIMIT_S = 75.0  # safety cap on a busy machine; the step count is the normal stop
N_TRAIN, N_VAL, N_EVAL = 1024, 64, 64
SEED = 0
SHIPPED = Path(__file__).resolve().parents[2] / "models" / "water" / "water-small.pt"


def build_default(workdir: Path, use_shipped: bool = True) -> Path:
    """The default model's checkpoint (accepted by export.families.water), with its held-out evaluation."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with torch_threads(1):  # many small matmuls: one thread is faster than two on a small shared CPU
        start = time.perf_counter()
        cfg = small_config()
        if use_shipped and SHIPPED.exists():
            model, stats, climatology, ckpt = load_checkpoint(SHIPPED)
        else:
            train_data, val_data = synthetic_splits(cfg, N_TRAIN, N_VAL, SEED)
            description = (f"synthetic (training.water.data.generate seed {SEED}: {N_TRAIN} train / {N_VAL} val, "
                           f"grid {cfg.height}x{cfg.width}, T={cfg.frames}, T_v={cfg.series_len})")
            result = train(cfg, train_data, val_data, steps=STEPS, batch_size=32, lr=1e-3, seed=SEED,
                           time_limit=TIME_LIMIT_S, eval_every=100, data_description=description, log=False)
            model, stats, climatology = result.model, result.stats, result.climatology
            ckpt = checkpoint_dict(result, description)
        held_out = generate(N_EVAL, model.cfg.height, model.cfg.width, model.cfg.frames, model.cfg.series_len,
                            seed=SEED + 100)
        evaluation = evaluate(model, stats, climatology, held_out, seed=SEED)
        ckpt["evaluation"] = {s: {m: v["mse"] for m, v in per.items()} for s, per in evaluation.items()}
        ckpt["metrics"]["build_seconds"] = round(time.perf_counter() - start, 1)
        path = workdir / "best.pt"
        save_atomic(ckpt, path)
        return path


if __name__ == "__main__":
    print(build_default(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/water-default")))
