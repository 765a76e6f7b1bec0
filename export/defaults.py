"""Build the default version of every model family that the repository lacks (used by `make serve`).

For each family: a committed artifact under `models/<family>/<version>/` is installed as is (for defaults
that need more training than a first start can afford); otherwise `training.<family>.default.build_default`
trains it (fixed seeds, synthetic or bundled data, bounded time) and it is exported like any other version.
A family whose default module has `DEFAULT_LEVELS` ({quality: quantisation step}, or {quality: None} for
the trained levels of a variable-rate checkpoint: the image codec) gets one
model per level from that one checkpoint, `export.families.<family>.publish_levels` (models named by level);
it is built when any of those models is missing.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shutil
import sys
import time
from pathlib import Path

from export.core import publish
from families import registry, repository_layout
from families.manifest import MANIFEST_FILE, Manifest, sha256_file

log = logging.getLogger("export.defaults")

FAMILIES = ("traffic", "weld", "water", "imagecodec")  # the registered families that ship a default model
ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "models"


def has_version(repository: Path, name: str) -> bool:
    return repository_layout.latest_version(repository / name) is not None


def install_committed(source: Path, repository: Path) -> Path:
    """Copy a committed artifact into the repository atomically, after verifying its checksums."""
    manifest = Manifest.read(source)
    for asset in manifest.assets.values():
        if sha256_file(source / asset.file) != asset.sha256:
            raise RuntimeError(f"committed artifact {source} is corrupted: {asset.file} checksum mismatch")
    with repository_layout.staged_version(repository / manifest.name, manifest.version) as (staging, version):
        shutil.copytree(source, staging, dirs_exist_ok=True)
    return repository / manifest.name / str(version)


def committed_artifacts(family: str) -> list[Path]:
    family_dir = COMMITTED / family
    if not family_dir.is_dir():
        return []
    return sorted(p for p in family_dir.rglob(MANIFEST_FILE) if repository_layout.is_version_dir(p.parent))


def default_models(family: str) -> list[str]:
    """The model names `make serve` installs for a family: one per level where the family has levels."""
    try:
        training = importlib.import_module(f"training.{family}.default")
    except ModuleNotFoundError:
        return [family]
    levels = getattr(training, "DEFAULT_LEVELS", None)
    if not levels:
        return [family]
    exporter = registry.family(family).load("export")
    return [exporter.level_name(q) for q in sorted(levels)]


def build_family(family: str, repository: Path, workdir: Path, torchscript: bool = True) -> list[Path]:
    committed = committed_artifacts(family)
    if committed:
        return [install_committed(m.parent, repository) for m in committed
                if not (repository / Manifest.read(m.parent).name / m.parent.name).exists()]
    training = importlib.import_module(f"training.{family}.default")
    checkpoint = training.build_default(workdir / family)
    exporter = registry.family(family).load("export")
    levels = getattr(training, "DEFAULT_LEVELS", None)
    if levels:
        return exporter.publish_levels(checkpoint, repository, levels, torchscript=torchscript)
    plan = exporter.plan_from_checkpoint(checkpoint, {})
    return [publish(plan, repository, family, torchscript=torchscript)]


def family_available(family: str) -> bool:
    if committed_artifacts(family):
        return True
    try:
        importlib.import_module(f"training.{family}.default")
        importlib.import_module(f"export.families.{family}")
    except ModuleNotFoundError as exc:
        log.warning("family %s has no default model builder (%s); skipped", family, exc)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.defaults", description=__doc__)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--workdir", type=Path, default=Path("runs/defaults"))
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--force", action="store_true", help="build a new version even if one exists")
    parser.add_argument("--no-torchscript", dest="torchscript", action="store_false",
                        help="ONNX graphs only, without their TorchScript twins (then no torch runtime on CUDA)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    failures = 0
    for family in args.families:
        if not family_available(family):
            continue
        if not args.force and all(has_version(args.repository, m) for m in default_models(family)):
            log.info("%s: a version exists in %s; nothing to build", family, args.repository)
            continue
        started = time.perf_counter()
        try:
            paths = build_family(family, args.repository, args.workdir, args.torchscript)
        except Exception:  # noqa: BLE001 - report and go on with the other families
            log.exception("%s: building the default model failed", family)
            failures += 1
            continue
        log.info("%s: built %s in %.0f s", family, ", ".join(map(str, paths)), time.perf_counter() - started)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
