"""The model repository on disk, `<root>/<model>/<version>/manifest.json`: which versions a model has, the
newest, the next number, and how a new version appears (written in a staging folder beside it, then renamed
into place in one step).

One rule for the service, export, `make serve`'s defaults and deploy/: a version is a folder named by a
canonical ASCII decimal ("3"; not "03" or "³", which `str.isdigit` accepts) that holds a `manifest.json`.
The manifest is the last file a version gets, so a numbered folder without one is incomplete and is not a
version; staging folders are dot-prefixed siblings and never one either.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from families.manifest import MANIFEST_FILE, is_version_name
from families.storage import fsync_dir, fsync_tree

STAGING_PREFIX = ".staging-"

# warn(key, message, *args): a skipped or unreadable folder, `key` naming it (the service warns once per key).
Warn = Callable[..., None]


class VersionExists(FileExistsError):
    """The version folder is already there: versions are immutable."""


def _hidden(path: Path) -> bool:
    return path.name.startswith(".")  # staging folders, editors' and file managers' dot-files


def is_version_dir(path: Path) -> bool:
    """`path` is a published version: a canonical version number naming a folder that holds a manifest."""
    return is_version_name(path.name) and path.is_dir() and (path / MANIFEST_FILE).is_file()


def versions_on_disk(model_dir: Path, warn: Warn | None = None) -> list[int]:
    """The published versions in `model_dir`, ascending; [] when it is missing or unreadable. Folders that are
    not version numbers are skipped (and reported to `warn`), numbered ones without a manifest silently."""
    try:
        if not model_dir.is_dir():
            return []
        entries = list(model_dir.iterdir())
    except OSError as exc:
        _report(warn, model_dir.name, "model folder %r is unreadable: %s", model_dir.name, exc)
        return []
    versions = []
    for entry in entries:
        if _hidden(entry):
            continue
        if not is_version_name(entry.name):
            if warn is not None and entry.is_dir():
                _report(warn, f"{model_dir.name}/{entry.name}", "skipping folder %r of model %r: version folders "
                        "are named by ASCII digits (1, 2, ...)", entry.name, model_dir.name)
            continue
        try:
            if is_version_dir(entry):
                versions.append(int(entry.name))
        except OSError as exc:
            _report(warn, f"{model_dir.name}/{entry.name}", "version folder %s/%s is unreadable: %s",
                    model_dir.name, entry.name, exc)
    return sorted(versions)


def scan_repository(root: Path, warn: Warn | None = None) -> dict[str, list[int]]:
    """{model: its versions on disk} for every model folder of `root` with at least one version."""
    try:
        model_dirs = sorted(root.iterdir()) if root.is_dir() else []
    except OSError as exc:
        _report(warn, "root", "model repository is unreadable: %s", exc)
        return {}
    found = {}
    for model_dir in model_dirs:
        if _hidden(model_dir):
            continue
        versions = versions_on_disk(model_dir, warn)
        if versions:
            found[model_dir.name] = versions
    return found


def latest_version(model_dir: Path) -> int | None:
    versions = versions_on_disk(model_dir)
    return versions[-1] if versions else None


def latest_version_dir(model_dir: Path) -> Path | None:
    version = latest_version(model_dir)
    return None if version is None else model_dir / str(version)


def latest_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The manifest of the newest version whose manifest reads as JSON (an older one when the newest is
    damaged), as a plain dict: for readers that need a field or two, not the validated `Manifest`."""
    for version in reversed(versions_on_disk(model_dir)):
        try:
            return json.loads((model_dir / str(version) / MANIFEST_FILE).read_text())
        except (OSError, ValueError):
            continue
    return None


def next_version(model_dir: Path) -> int:
    """One above every version number taken in `model_dir`. A numbered folder without a manifest takes its
    number too: it may be a copy in progress, and a version is never written over."""
    try:
        names = [entry.name for entry in model_dir.iterdir()]
    except FileNotFoundError:
        return 1
    return max((int(name) for name in names if is_version_name(name)), default=0) + 1


@contextmanager
def staged_version(model_dir: Path, version: int | None = None) -> Iterator[tuple[Path, int]]:
    """(staging folder, version) for a new version of the model in `model_dir` (the next number by default):
    what the block writes in the staging folder is flushed to disk and renamed to `model_dir/<version>` in one
    step when the block ends, and removed when it raises. Write `manifest.json` last. Raises VersionExists
    when the version is already there."""
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir) if version is None else version
    if not is_version_name(str(version)):
        raise ValueError(f"version {version!r} is not a version number")
    final_dir = model_dir / str(version)
    if final_dir.exists():
        raise VersionExists(f"{final_dir} already exists; versions are immutable, pick another version")
    # In the model's folder, so the rename stays within one file system; dot-prefixed, so no reader lists it.
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{version}-", dir=model_dir))
    try:
        yield staging, version
        _publish(staging, final_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging: Path, final_dir: Path) -> None:
    fsync_tree(staging)
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the version from a service running as another user
    try:
        os.rename(staging, final_dir)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):  # another writer published this number meanwhile
            raise VersionExists(f"{final_dir} already exists; versions are immutable, pick another version") from exc
        raise
    fsync_dir(final_dir.parent)


def _report(warn: Warn | None, key: str, message: str, *args: object) -> None:
    if warn is not None:
        warn(key, message, *args)
