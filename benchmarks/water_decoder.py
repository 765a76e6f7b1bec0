"""Decoder cost of the water MAE: CrossMAE vs the old pooled-token / self-attention decoder, and the
cost/benefit of WeightedFeatureMaps.

    python benchmarks/water_decoder.py --config full --batch 4 --iters 5          # timing + peak memory
    python benchmarks/water_decoder.py --config small --train-steps 1500         # + loss after equal training

Timing: forward + backward of the decoders only (encoder outputs computed once, detached, with 75% random
masks), median over --iters. Peak memory: CUDA peak allocated bytes during that step (on CPU: n/a);
saved activations: bytes the decoder forward keeps for backward (any device).
With --train-steps, each variant is trained from the same seed on synthetic data for that many steps and
its validation loss (sum of per-modality masked MSE, normalised units) is printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from families.water.preprocessing import MODALITIES
from training.water.config import TrainingConfig, fast_model, full_model, small_model
from training.water.masking import scenario_masks
from training.water.model import WaterMAE, masked_mse, select, take
from training.water.train import fit, synthetic_splits

CONFIGS = {"fast": fast_model, "small": small_model, "full": full_model}
VARIANTS = {
    "crossmae": {},
    "crossmae+self_attn": {"decoder_self_attn": True},
    "crossmae+wfm": {"use_weighted_fm": True},
    "crossmae+wfm+input": {"use_weighted_fm": True, "use_input": True},
    "crossmae kept=0.5": {"kept_mask_ratio": 0.5},
    "pooled self-attn (old)": {"use_cross_attn": False},
}


def saved_activation_mib(model: WaterMAE, encoded: dict, vi: dict, vp: dict, qi: dict, qp: dict) -> float:
    """Bytes the decoder forward saves for backward (activation memory), counted once per storage."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = (t.untyped_storage().data_ptr(), t.device.type)
        seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.decode(encoded, vi, vp, qi, qp)
    return sum(seen.values()) / 2**20


def decoder_step(model: WaterMAE, batch: int, device: str, iters: int) -> tuple[float, float | None, float]:
    cfg = model.cfg
    rng = np.random.default_rng(0)
    hp, wp = cfg.grid_patches
    tokens = {m: torch.randn(batch, cfg.tokens(m), cfg.patch**2 if m in ("precip", "soil", "temp") else 1,
                             device=device) for m in MODALITIES}
    static = torch.randn(batch, cfg.n_static, device=device)
    masks = scenario_masks("random75", rng, batch, cfg)
    hidden = {m: torch.from_numpy(masks[m]).to(device) for m in MODALITIES}
    vis = {m: select(~hidden[m]) for m in MODALITIES}
    keep = cfg.kept_mask_ratio
    query = {m: select(hidden[m], keep, torch.Generator().manual_seed(0)) for m in MODALITIES}
    vi, vp = {m: v[0] for m, v in vis.items()}, {m: v[1] for m, v in vis.items()}
    qi, qp = {m: q[0] for m, q in query.items()}, {m: q[1] for m, q in query.items()}
    with torch.no_grad():
        encoded = model.encode(tokens, static, vi, vp)
    times = []
    peak = None
    for i in range(iters + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        pred = model.decode(encoded, vi, vp, qi, qp)
        loss = sum(masked_mse(pred[m], take(tokens[m], qi[m]), qp[m]) for m in MODALITIES)
        loss.backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        if i > 0:  # first iteration is warm-up
            times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return statistics.median(times), peak, saved_activation_mib(model, encoded, vi, vp, qi, qp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="full")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--train-steps", type=int, default=0)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.variants.split(",")
    print(f"config={args.config} batch={args.batch} device={args.device}")
    print(f"{'variant':<26}{'params':>12}{'decoder s/batch':>17}{'peak MiB':>10}{'saved act. MiB':>16}")
    base_time = None
    for name in names:
        torch.manual_seed(0)
        model = WaterMAE(CONFIGS[args.config](**VARIANTS[name])).to(args.device)
        seconds, peak, saved = decoder_step(model, args.batch, args.device, args.iters)
        params = sum(p.numel() for p in model.parameters())
        base_time = base_time or seconds
        peak_s = f"{peak:10.1f}" if peak is not None else f"{'n/a':>10}"
        print(f"{name:<26}{params:>12,}{seconds:>17.4f}{peak_s}{saved:>16.1f}   ({seconds / base_time:.2f}x crossmae)",
              flush=True)
        del model
    if args.train_steps:
        print(f"\nvalidation loss after {args.train_steps} steps (config {args.config}, batch {args.train_batch})")
        for name in names:
            cfg = CONFIGS[args.config](**VARIANTS[name])
            train_data, val_data = synthetic_splits(cfg, 2048, 128, seed=0)
            training = TrainingConfig(steps=args.train_steps, batch_size=args.train_batch, lr=2e-3, seed=0,
                                      eval_every=args.train_steps, device=args.device)
            result = fit(cfg, train_data, val_data, training)
            val = result.history[-1]["val"]
            per = " ".join(f"{m}={val[m]:.4f}" for m in MODALITIES)
            print(f"{name:<26} total={val['total']:.4f} ({result.seconds / result.steps * 1000:.1f} ms/step) {per}",
                  flush=True)


if __name__ == "__main__":
    main()
