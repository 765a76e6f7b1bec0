"""Helpers for the deployment tests: Dockerfile / .dockerignore / compose parsing, dashboard and alert
expressions, and the Prometheus binaries (Debian package `prometheus`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
COMPOSE_CPU = DOCKER / "docker-compose.cpu.yml"
ROOT_COMPOSE = ROOT / "compose.yaml"
PROMETHEUS_YML = DOCKER / "prometheus" / "prometheus.yml"
ALERTS_YML = DOCKER / "prometheus" / "alerts.yml"
ALERTS_TEST_YML = DOCKER / "prometheus" / "tests" / "alerts_test.yml"
DASHBOARD_DIR = DOCKER / "grafana" / "dashboards"
PROVISIONING = DOCKER / "grafana" / "provisioning"
# The compose specification's JSON schema, vendored from the PyPI package check-jsonschema 0.39.0
# (check_jsonschema/builtin_schemas/vendor/compose-spec.json, Apache-2.0: LICENSE.compose-spec).
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "compose-spec.json"
INSTALL_SCRIPT = ROOT / "scripts" / "install_prometheus.sh"


# ---- YAML with Compose's merge tags ---------------------------------------------------------------
class Reset:
    """`!reset` in an override file: removes the key from the merged model."""


class _ComposeLoader(yaml.SafeLoader):
    pass


_ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())
_ComposeLoader.add_constructor("!override", lambda loader, node: loader.construct_object(node, deep=True))


def load_yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)  # noqa: S506 - SafeLoader subclass


def merge_compose(base: Any, override: Any) -> Any:
    """Compose's merge for what our override uses: mappings merge key by key, `!reset` deletes,
    anything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                merged.pop(key, None)
            elif key in merged:
                merged[key] = merge_compose(merged[key], value)
            else:
                merged[key] = value
        return merged
    return override


def interpolate(value: str) -> str:
    """Compose variable interpolation with every variable unset: `${VAR:-default}` -> default."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def volume_mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of a service's short-syntax volumes, defaults interpolated."""
    return [tuple(interpolate(v).split(":")[:2]) for v in service.get("volumes", [])]  # type: ignore[misc]


# ---- Dockerfiles ----------------------------------------------------------------------------------
@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with line continuations joined and comments / parser directives dropped."""
    instructions: list[Instruction] = []
    buffer, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by Docker too
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, args = buffer.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = ""
    assert not buffer, f"{path}: dangling line continuation"
    return instructions


def copy_sources(instruction: Instruction) -> tuple[list[str], str]:
    """(sources, destination) of a COPY; flags such as --chown are dropped."""
    parts = [p for p in instruction.args.split() if not p.startswith("--")]
    if parts and parts[0].startswith("["):
        parts = json.loads(instruction.args[instruction.args.index("["):])
    return parts[:-1], parts[-1]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            for key, value in re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", ins.args):
                env[key] = value.strip('"')
    return env


def dockerignore_excludes(ignore_file: Path, relative: str) -> bool:
    """Whether `relative` (a path under the build context) is left out, with BuildKit's .dockerignore
    semantics: patterns in order, the last one that matches the path or one of its parent folders wins,
    `!` re-includes, `*` stays within one path component and `**` spans any number."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in ignore_file.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


# ---- dashboards and alerts ------------------------------------------------------------------------
def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def iter_panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))  # collapsed rows nest their panels


@dataclass
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    expr: str


def panel_queries() -> list[PanelQuery]:
    queries = []
    for name, board in dashboards().items():
        for panel in iter_panels(board["panels"]):
            for target in panel.get("targets", []):
                queries.append(PanelQuery(name, panel["title"], target["refId"], target["expr"]))
    return queries


def variable_queries() -> list[tuple[str, str, str]]:
    """(dashboard, variable name, label_values(...) query) of every template variable."""
    out = []
    for name, board in dashboards().items():
        for var in board["templating"]["list"]:
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((name, var["name"], query))
    return out


# What Grafana substitutes at query time: "All" of a multi-value variable is its allValue (".*").
GRAFANA_SUBSTITUTIONS = {"$__rate_interval": "20s", "$instance": ".*", "$model": ".*", "$device": ".*"}


def substitute(expr: str, substitutions: dict[str, str] | None = None) -> str:
    # Longest names first so that "$__rate_interval" is not hit by a shorter variable.
    for key, value in sorted((substitutions or GRAFANA_SUBSTITUTIONS).items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(key, value)
    assert "$" not in expr, f"unsubstituted template variable in {expr}"
    return expr


def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(ALERTS_YML)["groups"] for rule in group["rules"] if "alert" in rule]


_COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")


def split_comparison(expr: str) -> tuple[str, str, str]:
    """`signal OP threshold` at the top level of a PromQL expression (outside (), {}, [] and strings)."""
    depth, quote, found = 0, "", None
    i = 0
    while i < len(expr):
        ch = expr[i]
        if quote:
            quote = "" if ch == quote and expr[i - 1] != "\\" else quote
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            for op in _COMPARISONS:
                if expr.startswith(op, i):
                    found = (expr[:i].strip(), op, expr[i + len(op):].strip())
                    i += len(op) - 1
                    break
        i += 1
    assert found is not None, f"no top-level comparison in alert expression {expr!r}"
    return found


def metric_names(expr: str) -> set[str]:
    """Metric names used in selectors of a PromQL expression (`name{` or `name[`)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_matchers = re.sub(r"\{[^}]*\}", "{}", without_strings)
    return set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", without_matchers))


# ---- Prometheus binaries --------------------------------------------------------------------------
def prometheus_binary(name: str = "prometheus") -> str:
    """Path of `prometheus` or `promtool`; installs the Debian package through scripts/install_prometheus.sh
    when it is missing, and skips (with the reason) when that is not possible."""
    found = shutil.which(name)
    if found:
        return found
    if os.environ.get("DEPLOY_TESTS_NO_INSTALL") == "1":
        pytest.skip(f"{name} is not installed (DEPLOY_TESTS_NO_INSTALL=1; run scripts/install_prometheus.sh)")
    result = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600)
    found = shutil.which(name)
    if found:
        return found
    reason = ((result.stdout + result.stderr).strip().splitlines() or ["no output"])[-1]
    pytest.skip(f"{name} is not installed and could not be installed: {reason}")
