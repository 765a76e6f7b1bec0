"""Default water model served by `make serve`: the small config trained on synthetic data (fixed seeds).

    python -m training.water.default runs/water-default   # prints the checkpoint path
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from training.water.config import small_config
from training.water.data import generate
from training.water.evaluate import evaluate
from training.water.train import checkpoint_dict, synthetic_splits, train

STEPS = 300
TIME_LIMIT_S = 75.0  # safety cap on a busy machine; the step count is the normal stop
N_TRAIN, N_VAL, N_EVAL = 1024, 64, 64
SEED = 0


def build_default(workdir: Path) -> Path:
    """Train the default model and return its checkpoint (accepted by export.families.water)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small matmuls: one thread is faster than two on a small shared CPU
    try:
        start = time.perf_counter()
        cfg = small_config()
        train_data, val_data = synthetic_splits(cfg, N_TRAIN, N_VAL, SEED)
        description = (f"synthetic (training.water.data.generate seed {SEED}: {N_TRAIN} train / {N_VAL} val, "
                       f"grid {cfg.height}x{cfg.width}, T={cfg.frames}, T_v={cfg.series_len})")
        result = train(cfg, train_data, val_data, steps=STEPS, batch_size=32, lr=2e-3, seed=SEED,
                       time_limit=TIME_LIMIT_S, eval_every=100, data_description=description, log=False)
        held_out = generate(N_EVAL, cfg.height, cfg.width, cfg.frames, cfg.series_len, seed=SEED + 100)
        evaluation = evaluate(result.model, result.stats, result.climatology, held_out, seed=SEED)
        ckpt = checkpoint_dict(result, description)
        ckpt["evaluation"] = {s: {m: v["mse"] for m, v in per.items()} for s, per in evaluation.items()}
        ckpt["metrics"]["build_seconds"] = round(time.perf_counter() - start, 1)
        path = workdir / "best.pt"
        torch.save(ckpt, path)
        return path
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    print(build_default(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/water-default")))
