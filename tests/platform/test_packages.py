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
FAMILY_NAMES = ("tiny", "traffic", "weld", "water", "imagecodec")


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
def test_every_family_plugs_in_the_same_parts(name: str) -> None:
    """The same parts, layered: the declaration (`SPEC`, light) and the plug-in that carries it; routes under the
    declared prefix, declared routes among them; settings read from `SERVICE_<F>_*`; metrics that build on a
    registry of their own."""
    from prometheus_client import CollectorRegistry

    from service.families import specs
    from service.plugin import FamilyPlugin, FamilySpec
    from service.settings import FamilySettings

    spec, plugin = REGISTRY[name].load("spec"), REGISTRY[name].load("service")
    assert isinstance(spec, FamilySpec) and spec.name == name and specs()[name] is spec
    assert isinstance(plugin, FamilyPlugin) and plugin.spec is spec
    paths = {route.path for route in plugin.router.routes} if plugin.router is not None else set()
    assert (spec.route_prefix is None) == (plugin.router is None)
    assert all(path.startswith(f"{spec.route_prefix}/") for path in paths), paths
    declared = {*spec.non_idempotent_routes, *spec.fanout_routes, *spec.version_pinned_routes}
    assert declared <= paths, declared - paths
    if spec.settings is not None:
        assert issubclass(spec.settings, FamilySettings)
        assert spec.settings.model_config["env_prefix"] == f"SERVICE_{name.upper()}_"
        spec.settings()  # the defaults are valid
    if spec.metrics is not None:
        spec.metrics(CollectorRegistry())  # its own series, none shared with another part
    if spec.rollout_quality is not None:
        assert "figure" in spec.rollout_quality.figures({}) and spec.rollout_quality.samples


def test_family_declarations_load_no_model_code() -> None:
    """The platform and deploy/ (the Ray ingress) read every declaration without torch or a runtime."""
    script = ("import sys\nfrom service.families import specs\nfrom deploy.ray.topology import PREFIXES\nspecs()\n"
              "heavy = sorted(m for m in ('torch', 'onnxruntime', 'PIL') if m in sys.modules)\n"
              "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("name", BY_FAMILY)
def test_a_family_uses_only_its_own_code_and_the_platform(name: str) -> None:
    """Layered: service/families/<f>/ imports its own web-free code (`families.<f>`) and its own service
    modules, the shared web-free modules and the platform, never another family's parts."""
    others = [f for f in REGISTRY if f != name]
    offenders = {}
    for path in (ROOT / "service" / "families" / name).rglob("*.py"):
        for module in _imported_modules(path):
            parts = module.split(".")
            if (parts[0] == "families" and len(parts) > 1 and parts[1] in others) or (
                    parts[:2] == ["service", "families"] and len(parts) > 2 and parts[2] in others):
                offenders.setdefault(str(path.relative_to(ROOT)), []).append(module)
    assert not offenders


def test_the_platform_imports_no_family_part() -> None:
    """service/ outside service/families/ and deploy/ reach a family only through the registry."""
    offenders = {}
    for folder in ("service", "deploy"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.is_relative_to(ROOT / "service" / "families"):
                continue
            for module in _imported_modules(path):
                parts = module.split(".")
                if (parts[0] == "families" and len(parts) > 1 and parts[1] in REGISTRY) or (
                        parts[:2] == ["service", "families"] and len(parts) > 2):
                    offenders.setdefault(str(path.relative_to(ROOT)), []).append(module)
    assert offenders == {}, offenders


def _imported_modules(path: Path) -> list[str]:
    modules = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module)
    return modules


def test_every_service_family_folder_is_registered() -> None:
    folders = {p.name for p in (ROOT / "service" / "families").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(REGISTRY)
