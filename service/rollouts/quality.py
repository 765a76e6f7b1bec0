"""Per-version quality figures of a rollout, read from the quality recorders' series, which already carry a
`version` label: a snapshot when the rollout starts, the difference on each read, so that the figures cover
the rollout only. And the answers' comparison (shadow: both versions answered the same request).

Which samples make a family's figures, and the figures themselves, are the family's declaration
(`FamilySpec.rollout_quality`, service/plugin.py); `figure` of each is what the automatic policy compares
(lower is better unless `higher_is_better`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from service.families import specs

Totals = dict[str, dict[tuple[str, str], float]]  # version -> (sample, split) -> value


def _declared() -> tuple[dict[str, str | None], dict[str, dict[str, str]]]:
    """Every family's rollout samples (name -> splitting label) and each sample's required label values."""
    samples: dict[str, str | None] = {}
    only: dict[str, dict[str, str]] = {}
    for spec in specs().values():
        if spec.rollout_quality is not None:
            samples.update(spec.rollout_quality.samples)
            only.update({name: dict(spec.rollout_quality.only) for name in spec.rollout_quality.samples})
    return samples, only


def snapshot(registry: CollectorRegistry, model: str) -> Totals:
    """The quality counters of every version of `model` (one pass over the registry)."""
    samples, only = _declared()
    found: Totals = defaultdict(lambda: defaultdict(float))
    for family in registry.collect():
        if not family.name.startswith("quality_"):
            continue
        for sample in family.samples:
            split = samples.get(sample.name, "")
            if split == "" or sample.labels.get("model") != model:
                continue
            if any(sample.labels.get(k, v) != v for k, v in only[sample.name].items()):
                continue
            key = (sample.name, sample.labels.get(split, "") if split else "")
            found[sample.labels["version"]][key] += sample.value
    return found


def difference(now: Totals, then: Totals, version: str) -> dict[tuple[str, str], float]:
    before = then.get(version, {})
    return {key: value - before.get(key, 0.0) for key, value in now.get(version, {}).items()}


def figures(family: str, totals: dict[tuple[str, str], float]) -> dict[str, Any]:
    """The family's quality figures of one version over the rollout; `figure` and `scored` feed the policy."""
    spec = specs().get(family)
    if spec is None or spec.rollout_quality is None:
        return {"figure": None, "scored": 0}
    return spec.rollout_quality.figures(totals)


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
    answers; None where the answers hold no such thing (or are not JSON: binary streams). Runs off the loop."""
    try:
        a, b = orjson.loads(baseline), orjson.loads(candidate)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(a, dict) or not isinstance(b, dict):
        return None, None
    if "forecasts" in a:  # forecasts: their values
        xs: list[float] = []
        ys: list[float] = []
        for fa, fb in zip(a.get("forecasts", []), b.get("forecasts", []), strict=False):
            _numbers(fa.get("values"), xs)
            _numbers(fb.get("values"), ys)
        return _mean_abs(xs, ys), None
    if "results" in a:  # classifications: their classes
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
