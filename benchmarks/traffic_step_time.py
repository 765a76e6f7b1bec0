"""Training-step time of the traffic presets (Phase 1 / Phase 3 quick / deep), FP32 vs bf16 autocast.

    python benchmarks/traffic_step_time.py --device cuda --presets fallback,quick,deep --profile quick

One optimiser step = `training.traffic.train.training_step` (forward of all supervised stages, masked-MAE
loss, backward, the preset's gradient clipping, AdamW) on random windows of the METR-LA shape (batch 32,
12 steps, N=207). Prints seconds per batch, the implied seconds per epoch of the synthetic training split
(220 batches) and peak GPU memory; `--profile` adds the top kernels of one preset, to show where the time
goes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.traffic.config import load_config  # noqa: E402
from training.traffic.model import TrafficForecaster, count_parameters  # noqa: E402
from training.traffic.train import training_step  # noqa: E402

BATCHES_PER_EPOCH = 220  # 7040 training windows of the 35-day synthetic set / batch 32


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="fallback,quick,deep")
    parser.add_argument("--nodes", type=int, default=207)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", default="", help="preset to profile (top kernels)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 12, args.nodes, 2, device=device)
    x[..., 1] = torch.rand(args.batch, 12, args.nodes, device=device)
    y = 40 + 20 * torch.rand(args.batch, 12, args.nodes, 1, device=device)
    rows = []
    for preset in [p for p in args.presets.split(",") if p]:
        for amp in ([False, True] if device.type == "cuda" else [False]):
            config = load_config(preset)
            cfg = config.for_data(args.nodes, use_time_of_day=True, use_day_of_week=False)
            clip = config.train.grad_clip or 0.0
            model = TrafficForecaster(cfg).to(device).train()
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

            def step(model=model, optimizer=optimizer, amp=amp, clip=clip) -> None:
                training_step(model, optimizer, x, y, amp, clip)

            step()
            step()
            sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync(device)
            per_batch = (time.perf_counter() - start) / args.steps
            row = {"preset": preset, "amp_bf16": amp, "parameters": count_parameters(model),
                   "seconds_per_batch": round(per_batch, 4),
                   "seconds_per_epoch": round(per_batch * BATCHES_PER_EPOCH, 1),
                   "peak_gpu_mib": round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda"
                   else None}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if preset == args.profile:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if device.type == "cuda":
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                with torch.profiler.profile(activities=activities) as prof:
                    for _ in range(3):
                        step()
                    sync(device)
                sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
                print(f"== profile {preset} amp={amp}")
                print(prof.key_averages().table(sort_by=sort, row_limit=12, max_name_column_width=60), flush=True)
            del model, optimizer
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
