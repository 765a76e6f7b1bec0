"""Extra CPU cost per request of the live quality signals (issue 16), measured in-process side by side.

Times the work each request adds (traffic: keeping the forecast + drift sums; observations: scoring; weld:
distance/margin histograms, class count, OOD window) against the request's own dominant step measured the
same way (traffic: feature construction + response rendering; weld: a k-NN search of the gallery size).

    python benchmarks/quality_overhead.py [--sensors 207] [--gallery 2000] [--repeats 300]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from families.traffic.preprocessing import Scaler, build_features
from families.weld.knn import knn_search
from service.families.traffic.metrics import TrafficMetrics
from service.families.traffic.quality import ForecastStore
from service.families.weld.metrics import WeldMetrics
from service.families.weld.quality import WeldQuality


def median_us(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sensors", type=int, default=207)
    parser.add_argument("--gallery", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    registry = CollectorRegistry()
    metrics = TrafficMetrics(registry)
    n, h = args.sensors, 12
    speeds = rng.uniform(0, 70, (1, 12, n))
    stamps = np.datetime64("2012-03-05T08:00") + np.arange(12) * np.timedelta64(300, "s")
    y = rng.uniform(0, 70, (1, h, n, 1)).astype(np.float32)
    store = ForecastStore(metrics, "traffic", "1", horizon=h, sensors=n, step_seconds=300, max_forecasts=1024,
                          max_bytes=64e6, ttl_s=7200)
    origin = iter(range(10**9))
    base = median_us(lambda: build_features(speeds, stamps[None], Scaler(50, 10)).tolist(), args.repeats)
    keep = median_us(lambda: store.remember(np.array([next(origin) * 300 * 10**9]), speeds, y), args.repeats)
    actual = rng.uniform(1, 70, (1, n))
    score = median_us(lambda: store.score(np.array([5 * 300 * 10**9]), actual), args.repeats)
    print(f"traffic ({n} sensors): features+render {base:.0f} us; keep forecast +{keep:.0f} us "
          f"({100 * keep / base:.1f} %); scoring one observed step {score:.0f} us")

    refs = torch.nn.functional.normalize(torch.randn(args.gallery, 512), dim=1)
    labels = torch.from_numpy(rng.integers(0, 12, args.gallery))
    query = torch.nn.functional.normalize(torch.randn(1, 512), dim=1).numpy()
    quality = WeldQuality.create(WeldMetrics(registry), "weld", "1", tuple(str(c) for c in range(12)), "cosine", 0.5,
                                 256)
    result = knn_search(query, refs, labels, 5, "cosine", 12)
    search = median_us(lambda: knn_search(query, refs, labels, 5, "cosine", 12), args.repeats)
    record = median_us(lambda: quality.record(result, "cosine"), args.repeats)
    print(f"weld (gallery {args.gallery}): k-NN search {search:.0f} us; quality record +{record:.0f} us "
          f"({100 * record / search:.1f} %)")


if __name__ == "__main__":
    main()
