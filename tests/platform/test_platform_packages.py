"""Package boundaries: training code runs where the web stack is not installed (a bare GPU machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAINING_MODULES = ("training.traffic.train", "training.water.train", "training.water.evaluate",
                    "training.imagecodec.train", "training.weld.train")


def test_training_imports_without_the_web_stack() -> None:
    blocked = ("fastapi", "starlette", "pydantic", "uvicorn", "prometheus_client")
    script = "import importlib, sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in blocked) + "".join(
        f"importlib.import_module({m!r})\n" for m in TRAINING_MODULES)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_every_family_is_discovered_and_built_lazily() -> None:
    from service.families import discover

    families = discover()
    assert sorted(families) == ["imagecodec", "traffic", "water", "weld"]
    assert all(family.name == name for name, family in families.items())
