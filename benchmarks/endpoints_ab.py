"""Before/after on the four task endpoints, side by side in one run: the service of another checkout (BASE,
e.g. a `git worktree` of the previous main) and this one, on the same model repository, load rounds
alternating between the two so that machine noise hits both alike. Prints p50/p99/throughput per endpoint
and the ratios after/before.

    git worktree add /tmp/base <rev>
    python benchmarks/endpoints_ab.py --base /tmp/base [--repository model_repository] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from loadgen import LoadResult, ServiceProcess, run_load  # noqa: E402
from traffic_latency import make_body as traffic_body  # noqa: E402
from water_service import make_requests as water_bodies  # noqa: E402

from families.repository_layout import latest_manifest  # noqa: E402
from families.weld.preprocessing import MODALITIES as WELD_MODALITIES  # noqa: E402
from families.weld.preprocessing import PreprocessParams  # noqa: E402


def _manifest(repository: Path, family: str) -> dict:
    manifest = latest_manifest(repository / family)
    if manifest is None:
        raise SystemExit(f"no version of {family!r} in {repository}")
    return manifest


def _photo_png(height: int, width: int) -> bytes:
    """A smooth synthetic photograph-like image (gradients + texture), PNG-encoded."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(6 * x + 1), np.cos(5 * y), np.sin(4 * (x + y))], -1) * 0.35 + 0.5
    image = np.clip(base + rng.normal(0, 0.03, base.shape), 0, 1)
    out = io.BytesIO()
    Image.fromarray((image * 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def requests_for(repository: Path) -> dict[str, tuple[Callable, tuple[int, ...]]]:
    """Per endpoint: a request maker and the concurrencies to measure."""
    rng = np.random.default_rng(0)
    sensors = list(_manifest(repository, "traffic")["preprocessing"]["sensor_ids"])
    traffic = [json.dumps(traffic_body(sensors, rng, 1)).encode() for _ in range(64)]
    shapes = PreprocessParams.from_dict(_manifest(repository, "weld")["preprocessing"]["params"]).shapes()
    weld = json.dumps({"samples": [{m: rng.random(shapes[m], np.float32).round(3).tolist()
                                    for m in WELD_MODALITIES}]}).encode()
    water = [json.dumps(b).encode() for b in water_bodies(_manifest(repository, "water")["preprocessing"]["grid"], 16)]
    png = _photo_png(256, 384)
    counter = iter(range(1 << 62))
    json_type = {"content-type": "application/json"}
    return {
        "/traffic/forecast": (lambda c: c.post("/traffic/forecast", content=traffic[next(counter) % 64],
                                               headers=json_type), (1, 16)),
        "/weld/classify": (lambda c: c.post("/weld/classify", content=weld, headers=json_type), (1, 8)),
        "/water/reconstruct": (lambda c: c.post("/water/reconstruct", content=water[next(counter) % 16],
                                                headers=json_type), (1, 8)),
        "/image/compress": (lambda c: c.post("/image/compress", files={"image": ("p.png", png, "image/png")}),
                            (1, 2)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="checkout of the 'before' service")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per endpoint and concurrency")
    parser.add_argument("--requests", type=int, default=40, help="requests per round")
    args = parser.parse_args()
    makers = requests_for(args.repository)
    results: dict[tuple[str, int, str], list[LoadResult]] = {}
    with tempfile.TemporaryDirectory() as state:
        env = {"SERVICE_DEVICE": "cpu", "SERVICE_CPU_THREADS": "1"}
        before_env = {**env, "SERVICE_STATE_DIR": f"{state}/before"}
        after_env = {**env, "SERVICE_STATE_DIR": f"{state}/after"}
        with ServiceProcess(args.repository, before_env, root=args.base) as before, \
                ServiceProcess(args.repository, after_env) as after:
            for endpoint, (make, concurrencies) in makers.items():
                for concurrency in concurrencies:
                    total = args.requests * max(1, concurrency // 2)
                    for round_ in range(args.rounds):
                        pair = [("before", before), ("after", after)]
                        for label, service in pair if round_ % 2 == 0 else pair[::-1]:  # no order bias
                            result = run_load(service.url, make, concurrency, total, warmup=3)
                            if result.errors:
                                sample = make(httpx.Client(base_url=service.url, timeout=60))
                                sys.exit(f"{label} {endpoint}: {result.statuses} {sample.text[:300]}")
                            results.setdefault((endpoint, concurrency, label), []).append(result)
    print(f"{'endpoint':<20} {'c':>3} {'before p50/p99 ms':>20} {'after p50/p99 ms':>20} {'req/s b/a':>14}  "
          "p50 a/b  req/s a/b")
    for endpoint, (_, concurrencies) in makers.items():
        for concurrency in concurrencies:
            row = {}
            for label in ("before", "after"):
                runs = results[(endpoint, concurrency, label)]
                latencies = np.concatenate([r.latencies_s for r in runs]) * 1000
                row[label] = (np.percentile(latencies, 50), np.percentile(latencies, 99),
                              sum(len(r.latencies_s) for r in runs) / sum(r.seconds for r in runs))
            b, a = row["before"], row["after"]
            print(f"{endpoint:<20} {concurrency:>3} {b[0]:>9.1f} / {b[1]:>8.1f} {a[0]:>9.1f} / {a[1]:>8.1f} "
                  f"{b[2]:>6.1f}/{a[2]:<6.1f}  {a[0] / b[0]:>6.2f}  {a[2] / b[2]:>8.2f}")


if __name__ == "__main__":
    main()
