"""Package boundaries and the one family contract (families/registry.py)."""

from __future__ import annotations

import ast
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import APIRouter

import families
import training
from families.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
WEB_STACK = ("fastapi", "starlette", "uvicorn", "pydantic_settings", "prometheus_client")
SERVICE_FAMILY_FILES = {"__init__.py", "family.py", "schemas.py", "routes.py"}


def _modules(package) -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
                  if not m.name.endswith("__main__"))


def _imports(folder: Path) -> dict[str, set[str]]:
    """The top-level packages every Python file under `folder` imports (absolute imports)."""
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_shared_and_training_code_import_without_the_web_stack() -> None:
    """Every module of families/ and training/ imports with the web stack blocked (a bare GPU machine)."""
    modules = _modules(families) + _modules(training)
    script = "import importlib, sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in WEB_STACK) + (
        f"for name in {modules!r}:\n    importlib.import_module(name)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(modules) > 30


@pytest.mark.parametrize(("folder", "forbidden"), [("training", {"service"}), ("families", {"service", "training",
                                                    "export"}), ("service", {"training", "export"})])
def test_layers_do_not_import_upwards(folder: str, forbidden: set[str]) -> None:
    offenders = {path: names & forbidden for path, names in _imports(ROOT / folder).items() if names & forbidden}
    assert not offenders


BY_FAMILY = sorted(REGISTRY)


def test_one_registry_lists_the_five_families() -> None:
    assert sorted(REGISTRY) == ["imagecodec", "tiny", "traffic", "water", "weld"]


@pytest.mark.parametrize("name", BY_FAMILY)
def test_every_family_has_every_part_of_the_contract(name: str) -> None:
    from pydantic import BaseModel

    from service.plugin import FamilyPlugin

    entry = REGISTRY[name]
    assert issubclass(entry.load("contract").Preprocessing, BaseModel)
    trainer = entry.load("training")
    assert list(inspect.signature(trainer.train).parameters)[:3] == ["config", "out_dir", "data"]
    assert list(inspect.signature(trainer.load_checkpoint).parameters) == ["path"]
    assert callable(trainer.main)
    plan = entry.load("export").plan_from_checkpoint
    assert list(inspect.signature(plan).parameters) == ["checkpoint", "options"]
    plugin = entry.load("service")
    assert isinstance(plugin, FamilyPlugin) and plugin.name == name
    assert plugin.router is None or isinstance(plugin.router, APIRouter)


@pytest.mark.parametrize("name", BY_FAMILY)
def test_every_service_family_folder_has_the_same_files(name: str) -> None:
    folder = ROOT / "service" / "families" / name
    assert {p.name for p in folder.glob("*.py")} == SERVICE_FAMILY_FILES


def test_every_service_family_folder_is_registered() -> None:
    folders = {p.name for p in (ROOT / "service" / "families").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(REGISTRY)
