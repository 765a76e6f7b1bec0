"""The manifest contract (families/traffic/contract.py): manifests written by earlier exports parse and dump
back to the same JSON; what the service cannot serve is refused when the version loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from families.manifest import Manifest
from families.traffic.contract import Preprocessing, training_statistics

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "repository" / "traffic" / "1"


def test_committed_manifest_round_trips_exactly() -> None:
    manifest = Manifest.read(GOLDEN)
    pre = manifest.preprocessing_as(Preprocessing)
    assert json.dumps(pre.model_dump(mode="json")) == json.dumps(manifest.preprocessing)  # same keys, same order
    assert pre.use_time_of_day and not pre.use_day_of_week
    assert pre.index[pre.sensor_ids[3]] == 3 and len(pre.index) == len(pre.sensor_ids)
    # an export of a checkpoint without the data summary has no drift reference: no key at all, not a null
    older = {k: v for k, v in manifest.preprocessing.items() if k != "training_statistics"}
    assert Preprocessing.model_validate(older).model_dump(mode="json") == older


def test_training_statistics_are_the_manifests() -> None:
    stats = Manifest.read(GOLDEN).preprocessing["training_statistics"]
    rebuilt = training_statistics(stats["missing_fraction"]["mean"], 53.64599754535227, 18.437940527751078)
    assert set(rebuilt) == set(stats)
    for name, stat in rebuilt.items():
        assert stat.model_dump() == pytest.approx(stats[name]), name


@pytest.mark.parametrize(("change", "problem"), [
    ({"features": ["speed", "day_of_week", "time_of_day"]}, "features"),
    ({"features": ["time_of_day"]}, "features"),
    ({"sensor_ids": []}, "sensor_ids"),
    ({"horizon": 0}, "horizon"),
    ({"scaler": {"mean": 1.0}}, "scaler"),
    ({"surprise": 1}, "surprise"),
])
def test_sections_the_service_cannot_serve_are_refused(change: dict, problem: str) -> None:
    manifest = Manifest.read(GOLDEN)
    broken = manifest.model_copy(update={"preprocessing": {**manifest.preprocessing, **change}})
    with pytest.raises(ValueError, match=f"does not fit the traffic contract: {problem}"):
        broken.preprocessing_as(Preprocessing)
