"""The platform names no family (issue 28): outside service/families/, service/ and deploy/ hold no family name
in code (identifiers, string literals); adding a family needs no edit there. Comments and docstrings are not
code, but the fewer the better."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

from families.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
FAMILY_NAMES = {"tiny", "traffic", "weld", "water", "imagecodec", *REGISTRY}
SCANNED = ("service", "deploy")
SKIPPED = (ROOT / "service" / "families", ROOT / "service" / "grpc" / "protos")  # the families; generated code
# Hits that are not a family: (file, the code's text).
NOT_A_FAMILY = {
    ("service/http/landing.py", '"Serving: latency, traffic and errors"'),  # a Grafana dashboard's title: network load
}
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def _docstrings(source: str) -> set[int]:
    """Line numbers where a docstring starts."""
    lines = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                lines.add(first.lineno)
    return lines


def _names_in_code(source: str) -> list[tuple[int, str]]:
    """(line, token) of every identifier or string literal (not a docstring) that names a family."""
    docstrings = _docstrings(source)
    hits = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in (tokenize.NAME, tokenize.STRING) or (
                token.type == tokenize.STRING and token.start[0] in docstrings):
            continue
        words = {w.lower() for w in _WORDS.findall(token.string)}
        if words & FAMILY_NAMES:
            hits.append((token.start[0], token.string))
    return hits


def test_the_scanner_sees_names_in_code_only() -> None:
    source = '"""About weld."""\nx = 1  # traffic\nweld_sample = "/image/x"\nTrafficPlan = 2\nname = "imagecodec-q1"\n'
    assert [token for _, token in _names_in_code(source)] == ["weld_sample", "TrafficPlan", '"imagecodec-q1"']


def test_service_and_deploy_name_no_family_in_code() -> None:
    hits = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = str(path.relative_to(ROOT))
            if any(path.is_relative_to(skipped) for skipped in SKIPPED):
                continue
            hits += [f"{relative}:{line}: {token}" for line, token in _names_in_code(path.read_text())
                     if (relative, token) not in NOT_A_FAMILY]
    assert not hits, "family names in platform code:\n" + "\n".join(hits)
