"""Per-version quality figures of a rollout, read from the quality recorders' series (service/quality/*),
which already carry a `version` label: a snapshot when the rollout starts, the difference on each read, so
that the figures cover the rollout only. And the answers' comparison (shadow: both versions answered the
same request).

Figures per family (the `figure` of each is what the automatic policy compares; lower is better unless
`higher_is_better`):
- traffic: MAE per horizon step (model predictor) from observations, its mean over steps, the points scored;
- weld: OOD share of the classified samples;
- imagecodec: mean bits per pixel and mean PSNR of the sampled reconstructions;
- water: self-check mean absolute error (normalised units).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

# name of the sample -> label that splits it further (or None)
_SAMPLES = {
    "quality_forecast_abs_error_total": "horizon",
    "quality_forecast_points_total": "horizon",
    "quality_predictions_total": None,
    "quality_ood_samples_total": None,
    "quality_codec_bits_per_pixel_sum": None,
    "quality_codec_bits_per_pixel_count": None,
    "quality_codec_psnr_db_sum": None,
    "quality_codec_psnr_db_count": None,
    "quality_selfcheck_abs_error_total": None,
    "quality_selfcheck_points_total": None,
}

Totals = dict[str, dict[tuple[str, str], float]]  # version -> (sample, split) -> value


def snapshot(registry: CollectorRegistry, model: str) -> Totals:
    """The quality counters of every version of `model` (one pass over the registry)."""
    found: Totals = defaultdict(lambda: defaultdict(float))
    for family in registry.collect():
        if not family.name.startswith("quality_"):
            continue
        for sample in family.samples:
            split = _SAMPLES.get(sample.name, "")
            if split == "" or sample.labels.get("model") != model:
                continue
            if sample.name.startswith("quality_forecast") and sample.labels.get("predictor") != "model":
                continue
            key = (sample.name, sample.labels.get(split, "") if split else "")
            found[sample.labels["version"]][key] += sample.value
    return found


def difference(now: Totals, then: Totals, version: str) -> dict[tuple[str, str], float]:
    before = then.get(version, {})
    return {key: value - before.get(key, 0.0) for key, value in now.get(version, {}).items()}


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def figures(family: str, totals: dict[tuple[str, str], float]) -> dict[str, Any]:
    """The family's quality figures of one version over the rollout; `figure` and `scored` feed the policy."""
    if family == "traffic":
        horizons = sorted({int(h) for (name, h) in totals if name == "quality_forecast_points_total"})
        per_h = {h: _ratio(totals.get(("quality_forecast_abs_error_total", str(h)), 0.0),
                           totals.get(("quality_forecast_points_total", str(h)), 0.0)) for h in horizons}
        scored = sum(totals.get(("quality_forecast_points_total", str(h)), 0.0) for h in horizons)
        known = [v for v in per_h.values() if v is not None]
        mae = sum(known) / len(known) if known else None
        return {"mae_per_horizon": {str(h): v for h, v in per_h.items() if v is not None}, "mae": mae,
                "scored_points": int(scored), "figure": "mae", "scored": int(scored)}
    if family == "weld":
        samples = totals.get(("quality_predictions_total", ""), 0.0)
        share = _ratio(totals.get(("quality_ood_samples_total", ""), 0.0), samples)
        return {"ood_share": share, "classified": int(samples), "figure": "ood_share", "scored": int(samples)}
    if family == "imagecodec":
        count = totals.get(("quality_codec_psnr_db_count", ""), 0.0)
        return {"bpp": _ratio(totals.get(("quality_codec_bits_per_pixel_sum", ""), 0.0),
                              totals.get(("quality_codec_bits_per_pixel_count", ""), 0.0)),
                "psnr_db": _ratio(totals.get(("quality_codec_psnr_db_sum", ""), 0.0), count),
                "figure": "psnr_db", "higher_is_better": True, "scored": int(count)}
    if family == "water":
        points = totals.get(("quality_selfcheck_points_total", ""), 0.0)
        return {"selfcheck_mae": _ratio(totals.get(("quality_selfcheck_abs_error_total", ""), 0.0), points),
                "selfcheck_points": int(points), "figure": "selfcheck_mae", "scored": int(points)}
    return {"figure": None, "scored": 0}


# ---- comparing two answers to the same request (shadow) ------------------------------------------------

def _numbers(node: Any, out: list[float]) -> None:
    if isinstance(node, bool):
        return
    if isinstance(node, int | float):
        out.append(float(node))
    elif isinstance(node, list):
        for item in node:
            _numbers(item, out)


def compare(baseline: bytes, candidate: bytes) -> tuple[float | None, bool | None]:
    """(mean |candidate - baseline| over the numeric outputs, whether the predicted classes agree) of two JSON
    answers; None where the answers hold no such thing (or are not JSON: codec streams). Runs off the loop."""
    try:
        a, b = orjson.loads(baseline), orjson.loads(candidate)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(a, dict) or not isinstance(b, dict):
        return None, None
    if "forecasts" in a:  # traffic
        xs: list[float] = []
        ys: list[float] = []
        for fa, fb in zip(a.get("forecasts", []), b.get("forecasts", []), strict=False):
            _numbers(fa.get("values"), xs)
            _numbers(fb.get("values"), ys)
        return _mean_abs(xs, ys), None
    if "results" in a:  # weld
        ca = [r.get("class") for r in a.get("results", [])]
        cb = [r.get("class") for r in b.get("results", [])]
        return None, (ca == cb) if ca else None
    if "outputs" in a:  # OIP JSON
        xs, ys = [], []
        for oa, ob in zip(a.get("outputs", []), b.get("outputs", []), strict=False):
            _numbers(oa.get("data"), xs)
            _numbers(ob.get("data"), ys)
        return _mean_abs(xs, ys), None
    return None, None


def _mean_abs(xs: list[float], ys: list[float]) -> float | None:
    if not xs or len(xs) != len(ys):
        return None
    total = math.fsum(abs(x - y) for x, y in zip(xs, ys, strict=True))
    return total / len(xs)
