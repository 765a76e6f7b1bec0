"""The cp312 manylinux wheels the service needs on the lent device machine, which lacks them
(benchmarks/device_packages.txt lists what it has): pyproject.toml's dependencies that the device lacks,
then every requirement of those wheels (their METADATA's Requires-Dist, markers evaluated for CPython 3.12
on Linux) that the device lacks too, until nothing is missing. One version of each, the version this
checkout's .venv runs where it has the package (what the tests ran against), else the newest.

    python benchmarks/gpu_wheels.py download --dest .whl     # pip download, one wheel per package
    python benchmarks/gpu_wheels.py check --dest .whl        # every requirement met by .whl or the device

Left out on purpose, with the reason printed: packages whose wheels do not fit the 64 MiB a call may carry
and that no GPU stage needs (PyAV: weld video uploads only; the GPU check sends tensors through /v2).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOT = Path(__file__).resolve().parents[1]
DEVICE_PACKAGES = ROOT / "benchmarks" / "device_packages.txt"
# Carried although the device has a version: the service needs a newer one than the device may hold
# (pydantic: typing-extensions>=4.16; the committed gRPC code: grpcio>=1.85.1, protobuf>=7.35.1), or a part
# of a requirement's extra that the service imports itself (httptools, of uvicorn[standard]).
ALWAYS = ("typing-extensions", "grpcio", "protobuf", "httptools")
LEFT_OUT = {"av": "PyAV's wheel is ~40 MB: with the tree it would pass the 64 MiB a call carries; only weld "
                  "video uploads decode with it, and the GPU check sends tensors through /v2",
            "faiss-cpu": "an optional extra (CPU serving of large weld galleries)"}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
# Markers evaluated as on the device: CPython 3.12 on x86-64 Linux.
ENVIRONMENT = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
               "implementation_name": "cpython", "platform_python_implementation": "CPython",
               "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}


def seeds(device: set[str]) -> list[str]:
    """pyproject.toml's dependencies that the device lacks (PyAV and the like left out), plus ALWAYS."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [canonicalize_name(Requirement(dep).name) for dep in project["dependencies"]]
    return sorted({n for n in names if n not in device and n not in LEFT_OUT} | set(ALWAYS))


def device_packages() -> set[str]:
    names = set()
    for line in DEVICE_PACKAGES.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(canonicalize_name(re.split(r"[=<>!~ ]", line, maxsplit=1)[0]))
    return names


def local_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """Requires-Dist of a wheel whose marker holds on the device (extras not asked for are skipped)."""
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(meta).decode()
    requirements = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is None or req.marker.evaluate(ENVIRONMENT):
                requirements.append(req)
    return requirements


def wheels(dest: Path) -> dict[str, Path]:
    return {canonicalize_name(parse_wheel_filename(p.name)[0]): p for p in sorted(dest.glob("*.whl"))}


def download(name: str, dest: Path) -> None:
    version = local_version(name)
    spec = f"{name}=={version}" if version else name
    platforms = [arg for platform in (*PLATFORMS, "any") for arg in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3",
               "--abi", "none", *platforms, "-d", str(dest), spec]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 and version:  # that version has no cp312 wheel: the newest that has one
        done = subprocess.run(command[:-1] + [name], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pip download {spec} failed:\n{done.stderr[-2000:]}")


def missing(dest: Path, device: set[str]) -> dict[str, str]:
    """{requirement name: who needs it} for requirements of the carried wheels met by neither side."""
    have = wheels(dest)
    needs: dict[str, str] = {}
    for seed in seeds(device):
        if seed not in have:
            needs[seed] = "the service (pyproject.toml)"
    for owner, wheel in have.items():
        for req in wheel_requirements(wheel):
            name = canonicalize_name(req.name)
            if name not in have and name not in device and name not in LEFT_OUT:
                needs.setdefault(name, owner)
    return needs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("download", "check"))
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl")
    args = parser.parse_args(argv)
    device = device_packages()
    args.dest.mkdir(parents=True, exist_ok=True)
    if args.action == "download":
        for _ in range(10):  # each round fetches what the last round's wheels require
            needs = missing(args.dest, device)
            if not needs:
                break
            for name, owner in sorted(needs.items()):
                print(f"download {name} (needed by {owner})", flush=True)
                download(name, args.dest)
    needs = missing(args.dest, device)
    for name, reason in LEFT_OUT.items():
        print(f"left out: {name}: {reason}")
    have = wheels(args.dest)
    names = [canonicalize_name(parse_wheel_filename(p.name)[0]) for p in args.dest.glob("*.whl")]
    duplicates = sorted({n for n in names if names.count(n) > 1})  # two versions stop the whole install
    for wheel in have.values():
        print(f"  {wheel.name} ({wheel.stat().st_size / 1024:.0f} KiB)")
    if needs or duplicates:
        print(f"MISSING: {needs}; duplicate versions: {duplicates}")
        return 1
    print(f"{len(have)} wheels; every requirement is met by them or by the device's packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
