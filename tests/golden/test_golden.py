"""Every task route and /v2 infer answers the recorded requests exactly as recorded (see cases.py)."""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.harness import LiveServer
from tests.golden import cases


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return cases.load()


@pytest.fixture(scope="module")
def server(serve) -> LiveServer:
    return serve(cases.REPOSITORY)


def _close(actual: Any, expected: Any, where: str, exact: bool) -> None:
    """Equal JSON; floats may differ in the last bits only where the CPU differs from the recording one."""
    if isinstance(expected, float) and isinstance(actual, float | int) and not exact:
        assert math.isclose(actual, expected, rel_tol=1e-4, abs_tol=1e-5), (where, actual, expected)
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), (where, actual, expected)
        for key in expected:
            _close(actual[key], expected[key], f"{where}.{key}", exact)
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), (where, actual, expected)
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _close(a, e, f"{where}[{i}]", exact)
    else:
        assert actual == expected, (where, actual, expected)


def test_recorded_requests_answer_as_recorded(server: LiveServer, golden: dict[str, Any], subtests) -> None:
    same_cpu = golden["cpu"] == cases.cpu_model()
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for case in golden["cases"]:
            request, expected = case["request"], case["answer"]
            with subtests.test(request["name"]):
                actual = cases.answer(cases.send(client, request))
                assert (actual["status"], actual["content_type"]) == (expected["status"], expected["content_type"])
                if "json" in expected:
                    _close(actual["json"], expected["json"], request["name"], exact=same_cpu)
                elif same_cpu:  # codec bitstreams and decoded images: bit-identical
                    assert actual["body"] == expected["body"], request["name"]
                else:  # another CPU may round a few symbols differently: same size within 2 %
                    sizes = [len(base64.b64decode(r["body"])) for r in (actual, expected)]
                    assert abs(sizes[0] - sizes[1]) <= 0.02 * sizes[1] + 16, (request["name"], sizes)


def test_golden_repository_is_the_recorded_one() -> None:
    """The replay means nothing if the recorded repository changed: every family is in it, untouched."""
    models = sorted(p.name for p in cases.REPOSITORY.iterdir() if p.is_dir())
    assert models == ["imagecodec", "tiny", "traffic", "water", "weld"]
    assert all((Path(cases.REPOSITORY) / m / "1" / "manifest.json").is_file() for m in models)
