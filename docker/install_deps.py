"""Install the project's dependencies (and chosen extras) from pyproject.toml, without the project itself.

Used by the Dockerfiles so that dependencies get their own cached layer and are never listed twice:
    python docker/install_deps.py --extras gpu,train        # pip install <those requirements>
    python docker/install_deps.py --extras cpu --print      # only print them
Stdlib only (runs before anything is installed).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        raise SystemExit(f"unknown extra(s) {unknown}; pyproject.toml defines {sorted(optional)}")
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        reqs.extend(optional[extra])
    return reqs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--extras", default="", help="comma-separated extras, e.g. gpu,train")
    parser.add_argument("--print", action="store_true", help="print the requirements instead of installing")
    args = parser.parse_args(argv)
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    reqs = requirements(args.pyproject, extras)
    if args.print:
        print("\n".join(reqs))
        return 0
    return subprocess.call([sys.executable, "-m", "pip", "install", *reqs])


if __name__ == "__main__":
    raise SystemExit(main())
