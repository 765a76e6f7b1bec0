"""The model repository on disk: Triton-style `<model>/<version>/` folders with a manifest, scanned and cached.

Versions are immutable, so a manifest is read once per file change (its mtime). Request paths look names up in
`on_disk`, the last scan's view, so an unknown name (e.g. from an untrusted codec stream header) costs a dict
lookup, not a scan.
"""

from __future__ import annotations

import logging
from pathlib import Path

from families.manifest import MANIFEST_FILE, Manifest, VersionPolicy
from families.repository_layout import scan_repository, versions_on_disk

log = logging.getLogger(__name__)


class RepositoryDisk:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.on_disk: dict[str, list[int]] = {}  # the repository as the last scan saw it
        self._manifest_cache: dict[tuple[str, int], tuple[int, Manifest | None]] = {}
        self._warned: set[str] = set()

    def scan(self) -> dict[str, list[int]]:
        """Models and their versions (families/repository_layout.py's one rule); folders that are not a version
        number are skipped with a warning, once per folder."""
        self.on_disk = scan_repository(self.root, self._warn_once)
        return self.on_disk

    def versions(self, name: str) -> list[int]:
        """The versions of model `name` on disk now (not the last scan's view)."""
        return versions_on_disk(self.root / name, self._warn_once)

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        # scan() runs on lookups of unloaded models and on the index: warn once per folder, not per request.
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def manifests(self, name: str) -> dict[int, Manifest]:
        """Every readable manifest of `name` the last scan found, by version (cached; versions are immutable)."""
        found = {}
        for version in self.on_disk.get(name, []):
            manifest = self._manifest(name, version)
            if manifest is not None:
                found[version] = manifest
        return found

    def _manifest(self, name: str, version: int) -> Manifest | None:
        path = self.root / name / str(version)
        try:
            stamp = (path / MANIFEST_FILE).stat().st_mtime_ns
        except OSError:
            return None
        cached = self._manifest_cache.get((name, version))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        manifest: Manifest | None
        try:
            manifest = Manifest.read(path)
            if manifest.name != name or manifest.version != version:
                raise ValueError(f"manifest says {manifest.name} v{manifest.version}")
        except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            log.warning("manifest of %s v%d is unreadable: %s", name, version, exc)
            manifest = None
        self._manifest_cache[(name, version)] = (stamp, manifest)
        return manifest

    def version_policy(self, name: str) -> VersionPolicy:
        """The policy of the newest readable manifest of `name` (the default when there is none)."""
        manifests = self.manifests(name)
        return manifests[max(manifests)].version_policy if manifests else VersionPolicy()

    def policy_keeps(self, name: str, version: int) -> bool:
        return self.version_policy(name).keeps(version, self.versions(name))

