"""FP16 and BF16 per family: parity with FP32 and speed (issue 27; run by benchmarks/gpu_check.sh).

    python benchmarks/gpu_precision.py [--device cuda] [--families traffic,weld,water,imagecodec] [--json OUT]

Each family's export plan is built from its shipped checkpoint (models/*.pt; weld: .gpu/weld/best.pt), so
the graphs are the eager modules export captures, with export's own parity samples (batchable graphs
repeated up to the manifest's max batch for the timing). Per graph: FP32 on the device is the reference;
the module cast to FP16 / BF16 (weights and float inputs) gives the error (max abs, max abs over max |ref|,
mean abs over mean |ref|; weld also the cosine of the embeddings) and the time per batch.

Verdict per family: a half-precision option holds where every graph's mean relative error stays under 1e-3
and its max relative error under 1e-2 (weld: cosine >= 0.9999), else the reason. The codec never gets one:
its entropy parameters must agree across machines within HINT_MARGIN (5e-4 table units), which FP32 noise
meets and half precision does not.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHECKPOINTS = {"traffic": ROOT / "models/traffic/traffic-research.pt", "water": ROOT / "models/water/water-small.pt",
               "imagecodec": ROOT / "models/imagecodec/imagecodec-q2.pt", "weld": ROOT / ".gpu/weld/best.pt"}
MEAN_REL, MAX_REL, WELD_COS = 1e-3, 1e-2, 0.9999


def _outputs(value) -> list:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return list(value.values())
    return list(value)


def _cast(sample: dict, dtype, device: str) -> list:

    return [v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for v in sample.values()]


def _time(module, inputs: list, device: str, seconds: float) -> float:
    import torch

    with torch.inference_mode():
        for _ in range(3):
            module(*inputs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        runs, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or runs < 3:
            module(*inputs)
            runs += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return (time.perf_counter() - t0) / runs


class _Autocast:
    """The FP32 module called under torch.autocast: what a half-precision option would run for a module that
    creates FP32 tensors inside its forward."""

    def __init__(self, module, device: str, dtype) -> None:  # noqa: ANN001 - torch types, imported lazily
        self.module, self.device_type, self.dtype = module, device.split(":")[0], dtype

    def __call__(self, *inputs):  # noqa: ANN002, ANN204
        import torch

        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(*inputs)


def family_precision(family: str, device: str, seconds: float) -> dict:
    import torch

    from families import registry
    from service.runtimes.torchscript import apply_process_settings

    apply_process_settings(0)  # FP32 means FP32: TF32 off, as the service runs
    exporter = registry.family(family).load("export")
    plan = exporter.plan_from_checkpoint(CHECKPOINTS[family], {})
    max_batch = plan.batching.max_batch_size
    graphs = {}
    for graph in plan.graphs:
        sample = graph.samples[0]
        if graph.batchable and max_batch > 1:  # the timing at the served max batch
            sample = {k: v[:1].repeat(max_batch, *([1] * (v.dim() - 1))) for k, v in sample.items()}
        fp32 = copy.deepcopy(graph.module).to(device).eval()
        with torch.inference_mode():
            reference = [t.float() for t in _outputs(fp32(*_cast(sample, torch.float32, device)))]
        row = {"batch": int(next(iter(sample.values())).shape[0]) if graph.batchable else 1,
               "fp32_ms": 1000 * _time(fp32, _cast(sample, torch.float32, device), device, seconds)}
        for label, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
            try:
                try:  # the whole module in half precision, weights and inputs
                    half = copy.deepcopy(graph.module).to(device=device, dtype=dtype).eval()
                    inputs = _cast(sample, dtype, device)
                    with torch.inference_mode():
                        got = [t.float() for t in _outputs(half(*inputs))]
                    mode = "cast"
                except RuntimeError:  # a module that makes FP32 tensors of its own: autocast (mixed precision)
                    half, mode = _Autocast(fp32, device, dtype), "autocast"
                    inputs = _cast(sample, torch.float32, device)
                    with torch.inference_mode():
                        got = [t.float() for t in _outputs(half(*inputs))]
                errors = {"max_abs": 0.0, "max_rel": 0.0, "mean_rel": 0.0}
                for want, have in zip(reference, got, strict=True):
                    if not want.is_floating_point() or want.numel() == 0:
                        continue
                    diff = (have - want).abs()
                    scale = want.abs()
                    errors["max_abs"] = max(errors["max_abs"], float(diff.max()))
                    errors["max_rel"] = max(errors["max_rel"], float(diff.max() / scale.max().clamp_min(1e-12)))
                    errors["mean_rel"] = max(errors["mean_rel"], float(diff.mean() / scale.mean().clamp_min(1e-12)))
                if family == "weld":
                    cos = torch.nn.functional.cosine_similarity(got[0], reference[0], dim=-1)
                    errors["min_cosine"] = float(cos.min())
                errors["finite"] = bool(all(torch.isfinite(t).all() for t in got))
                errors["mode"] = mode
                errors["ms"] = 1000 * _time(half, inputs, device, seconds)
                row[label] = errors
            except Exception as exc:  # noqa: BLE001 - a dtype the module cannot run in is a result too
                row[label] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        graphs[graph.name] = row
    return {"graphs": graphs, "verdict": verdict(family, graphs)}


def verdict(family: str, graphs: dict) -> dict:
    out = {}
    for label in ("fp16", "bf16"):
        rows = [g[label] for g in graphs.values()]
        if family == "imagecodec":
            out[label] = ("not offered: the entropy parameters must agree across machines within HINT_MARGIN "
                          "(5e-4 table units); half precision errs by "
                          f"{max(r.get('max_abs', float('nan')) for r in rows):.2g} on the outputs")
        elif any("error" in r for r in rows):
            out[label] = "not offered: " + next(r["error"] for r in rows if "error" in r)
        elif not all(r["finite"] for r in rows):
            out[label] = "not offered: non-finite outputs (overflow)"
        elif family == "weld" and min(r["min_cosine"] for r in rows) < WELD_COS:
            out[label] = f"not offered: embedding cosine {min(r['min_cosine'] for r in rows):.5f} < {WELD_COS}"
        elif max(r["mean_rel"] for r in rows) > MEAN_REL or max(r["max_rel"] for r in rows) > MAX_REL:
            out[label] = (f"not offered: mean rel {max(r['mean_rel'] for r in rows):.2e} (bound {MEAN_REL:g}), "
                          f"max rel {max(r['max_rel'] for r in rows):.2e} (bound {MAX_REL:g})")
        else:
            speedup = sum(g["fp32_ms"] for g in graphs.values()) / sum(r["ms"] for r in rows)
            out[label] = f"holds: mean rel {max(r['mean_rel'] for r in rows):.2e}, {speedup:.2f}x FP32's speed"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--families", default="traffic,weld,water,imagecodec")
    parser.add_argument("--seconds", type=float, default=0.5, help="timing per graph and precision")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report: dict = {"device": args.device}
    failures = 0
    for family in args.families.split(","):
        if not CHECKPOINTS[family].is_file():
            print(f"{family}: no checkpoint at {CHECKPOINTS[family]} (weld: benchmarks/gpu_prepare.sh)", flush=True)
            failures += 1
            continue
        try:
            t0 = time.perf_counter()
            result = family_precision(family, args.device, args.seconds)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other families
            print(f"{family}: failed: {type(exc).__name__}: {exc}", flush=True)
            report[family] = {"error": repr(exc)}
            failures += 1
            continue
        report[family] = result
        for name, row in result["graphs"].items():
            parts = [f"fp32 {row['fp32_ms']:.2f} ms"]
            for label in ("fp16", "bf16"):
                r = row[label]
                parts.append(f"{label} error" if "error" in r else
                             f"{label} ({r['mode']}) {r['ms']:.2f} ms max rel {r['max_rel']:.1e} mean rel "
                             f"{r['mean_rel']:.1e}")
            print(f"precision {family}.{name} (batch {row['batch']}): " + ", ".join(parts), flush=True)
        for label, text in result["verdict"].items():
            print(f"precision {family} {label}: {text} ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
