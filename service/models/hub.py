"""ModelHub: which version of each model serves, and its life: load (build, warm up, swap in place), versions
kept alongside by the version policy, unload, shutdown; and lookup by name and version.

A (re)load builds and warms the new version while the old one keeps serving, swaps, then drains the old one.
If the latest version fails to load at start-up, the newest one that loads is served instead (`fallback(name)`
says so). Besides the served version, a model's version policy (`Manifest.version_policy` of its latest
version) may keep older versions loadable: `acquire(name, version)` loads one lazily alongside the served one
(e.g. to decode a codec stream made by it); a later load of a newer version keeps it while the policy does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from families.manifest import Manifest, VersionPolicy
from service import gc_tuning
from service.batching.queue_bytes import QueueBytes
from service.errors import LoadFailed, NotFound, NotReady, ServiceError, redact_paths
from service.metrics import Metrics
from service.models.disk import RepositoryDisk
from service.models.version import Family, LoadedVersion, VersionState, VersionStatus, teardown_version
from service.settings import Settings

log = logging.getLogger(__name__)

# A version that failed to load lazily is not retried before this many seconds (each try costs a load).
LAZY_RETRY_S = 30.0


class ModelHub:
    def __init__(self, settings: Settings, metrics: Metrics, families: Mapping[str, Family], device: str) -> None:
        self.settings = settings
        self.metrics = metrics
        self.families = families
        self.device = device
        self.root = settings.model_repository
        self._serving: dict[str, dict[int, LoadedVersion]] = {}  # the served version of each model
        self._extra: dict[str, dict[int, LoadedVersion]] = {}  # older versions kept by the version policy
        self._states: dict[tuple[str, int], VersionState] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._retired: set[asyncio.Task] = set()
        self._acquiring: dict[tuple[str, int], asyncio.Task] = {}
        self._lazy_failed_at: dict[tuple[str, int], float] = {}
        self._fallback: dict[str, str] = {}
        self._wanted: set[str] = set()  # models that should be serving (readiness); no disk scan per probe
        self.disk = RepositoryDisk(self.root)  # the last scan (start, load, unload, index) is what lookups see
        self._closing = False
        self.startup_complete = False
        # One byte bound over every model's queues.
        self.queue_bytes = QueueBytes(settings.max_queued_bytes, metrics.queued_bytes)


    # ---- repository on disk (service/models/disk.py) ---------------------------------------------
    def scan(self) -> dict[str, list[int]]:
        """Models and their numeric versions with a manifest (see RepositoryDisk.scan)."""
        return self.disk.scan()

    def manifests(self, name: str) -> dict[int, Manifest]:
        """Every readable manifest of `name` the last scan found, by version (cached; versions are immutable)."""
        return self.disk.manifests(name)

    def version_policy(self, name: str) -> VersionPolicy:
        """The policy of the newest readable manifest of `name` (the default when there is none)."""
        return self.disk.version_policy(name)

    def wanted_models(self) -> list[str]:
        names = list(self.scan())
        allow = self.settings.model_allowlist
        return [n for n in names if not allow or n in allow]

    # ---- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self._wanted = set(self.wanted_models())
        for name in sorted(self._wanted):
            await self._start_model(name)
        self.startup_complete = True

    async def _start_model(self, name: str) -> None:
        """Serve the latest version, or else the newest one that loads (a fallback, said in metadata)."""
        versions = self.scan().get(name, [])
        failed: list[str] = []
        for version in reversed(versions):
            try:
                await self.load(name, version)
            except Exception as exc:  # noqa: BLE001 - one bad version must not stop the others
                failed.append(exc.message if isinstance(exc, ServiceError) else redact_paths(str(exc)))
                continue
            if failed:
                self._fallback[name] = f"serving version {version} because newer versions failed to load: " \
                                       + "; ".join(failed)
                self.metrics.model_fallback.labels(name).set(1)
                log.error("model %s: %s", name, self._fallback[name])
            return
        log.error("model %s is not served: no version loads", name)

    async def load(self, name: str, version: int | None = None) -> LoadedVersion:
        """Load `version` (default: latest on disk), warm it up, then make it the served version.

        Raises LoadFailed (the message names no filesystem path) when the version does not load."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            versions = self.scan().get(name)
            if not versions:
                raise NotFound(f"model {name!r} is not in the repository")
            version = version if version is not None else versions[-1]
            if version not in versions:
                raise NotFound(f"model {name!r} has no version {version} (available: {versions})")
            current = self._serving.get(name, {})
            kept = self._extra.get(name, {})
            if version in current:
                loaded = current[version]
            elif version in kept:  # already loaded alongside: promote it
                loaded = kept.pop(version)
            else:
                loaded = await self._build(name, version)
            self._serving[name] = {version: loaded}
            self._wanted.add(name)
            self._fallback.pop(name, None)  # an explicit (or the first) load is what the operator wants
            self.metrics.model_fallback.labels(name).set(0)
            for old in current.values():
                if old is loaded:
                    continue
                if old.version < version and self.disk.policy_keeps(name, old.version):
                    kept[old.version] = old  # streams of the previous version still decode, no reload
                else:
                    self._retire(old)
            self._extra[name] = kept
            self._prune_extras(name)
            return loaded

    def _prune_extras(self, name: str) -> None:
        kept = self._extra.get(name, {})
        for version in [v for v in kept if not self.disk.policy_keeps(name, v)]:
            self._retire(kept.pop(version))

    async def _build(self, name: str, version: int) -> LoadedVersion:
        self._states[(name, version)] = VersionState(VersionStatus.LOADING)
        started = time.perf_counter()
        path = self.root / name / str(version)
        loaded: LoadedVersion | None = None
        family: Family | None = None
        try:
            manifest = Manifest.read(path)
            if manifest.name != name or manifest.version != version:
                raise RuntimeError(f"manifest says {manifest.name} v{manifest.version}, folder is {name}/{version}")
            family = self.families.get(manifest.family)
            loaded = LoadedVersion(manifest, path, self.device, self.settings, self.metrics, self.queue_bytes)
            await asyncio.to_thread(loaded.open, family.prepare if family is not None else None)
            loaded.start()
        except Exception as exc:
            # The full message (paths included) goes to the log; clients get it without paths.
            log.error("model %s v%d failed to load from %s: %s: %s", name, version, path, type(exc).__name__, exc)
            reason = redact_paths(f"{type(exc).__name__}: {exc}")
            self._states[(name, version)] = VersionState(VersionStatus.UNAVAILABLE, reason)
            self.metrics.model_ready.labels(name, str(version)).set(0)
            self.metrics.load_failures.labels(name, str(version)).inc()
            if loaded is not None:  # e.g. warm-up failed after `prepare` opened the family's resources
                if loaded.prepared is not None:
                    await teardown_version(family, loaded)
                loaded.executor.shutdown(wait=False)
            raise LoadFailed(f"model {name!r} version {version} failed to load: {reason}") from exc
        if self.settings.gc_freeze:
            gc_tuning.freeze(f"loading {name} v{version}")  # keep its sessions out of later collections
        self.metrics.load_duration.labels(name, str(version)).observe(time.perf_counter() - started)
        self.metrics.model_ready.labels(name, str(version)).set(1)
        self._states[(name, version)] = VersionState(VersionStatus.READY)
        log.info("loaded %s v%d on %s in %.1fs", name, version, self.device, time.perf_counter() - started)
        return loaded

    def _retire(self, loaded: LoadedVersion) -> None:
        key = (loaded.name, loaded.version)
        self._states[key] = VersionState(VersionStatus.UNLOADING)
        self.metrics.model_ready.labels(loaded.name, str(loaded.version)).set(0)

        async def retire() -> None:
            await loaded.drain()
            # What the plug-in opened for the version (e.g. weld's gallery connections) is released with it.
            await teardown_version(self.families.get(loaded.manifest.family), loaded)
            self._states[key] = VersionState(VersionStatus.UNAVAILABLE, "unloaded")

        task = asyncio.get_running_loop().create_task(retire())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def unload(self, name: str) -> None:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            self.scan()
            current = self._serving.pop(name, None)
            if current is None:
                raise NotFound(f"model {name!r} is not loaded")
            self._wanted.discard(name)
            self._fallback.pop(name, None)
            for loaded in [*current.values(), *self._extra.pop(name, {}).values()]:
                self._retire(loaded)

    async def shutdown(self) -> None:
        """Finish every accepted request, then stop all workers."""
        self._closing = True
        if self._acquiring:  # lazy loads in flight register (or retire) their version before we drain
            await asyncio.gather(*self._acquiring.values(), return_exceptions=True)
        for table in (self._serving, self._extra):
            for name in list(table):
                for loaded in table.pop(name).values():
                    self._retire(loaded)
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)

    # ---- versions alongside the served one ----------------------------------------------------------
    async def acquire(self, name: str, version: int) -> LoadedVersion:
        """Version `version` of a served model, loaded lazily alongside the served one when its version
        policy keeps it. NotFound when the policy (or the disk) has no such version; NotReady when it fails
        to load (retried after LAZY_RETRY_S)."""
        served = self.get(name)
        if version == served.version:
            return served
        kept = self._extra.get(name, {}).get(version)
        if kept is not None:
            return kept
        self._check_policy(name, version)
        key = (name, version)
        task = self._acquiring.get(key)
        if task is None:
            failed_at = self._lazy_failed_at.get(key)
            if failed_at is not None and time.monotonic() - failed_at < LAZY_RETRY_S:
                state = self._states.get(key)
                raise NotReady(f"version {version} of model {name!r} failed to load"
                               + (f" ({state.reason})" if state and state.reason else ""),
                               retry_after_s=int(LAZY_RETRY_S))
            task = asyncio.get_running_loop().create_task(self._load_alongside(name, version))
            self._acquiring[key] = task
            task.add_done_callback(lambda _: self._acquiring.pop(key, None))
        # Shielded: one waiting request that goes away must not cancel the load the others share.
        return await asyncio.shield(task)

    def _check_policy(self, name: str, version: int) -> None:
        on_disk = self.disk.versions(name)
        if version not in on_disk:
            raise NotFound(f"model {name!r} has no version {version} (on disk: {on_disk})")
        policy = self.version_policy(name)
        if not policy.keeps(version, on_disk):
            raise NotFound(f"version {version} of model {name!r} is not kept by its version policy "
                           f"({policy.model_dump()})")

    async def _load_alongside(self, name: str, version: int) -> LoadedVersion:
        async with self._locks.setdefault(name, asyncio.Lock()):  # after any load/unload of this model
            if self._closing or name not in self._serving:
                raise NotReady(f"model {name!r} is not loaded")
            if version in self._serving[name]:
                return self._serving[name][version]
            kept = self._extra.setdefault(name, {})
            if version in kept:
                return kept[version]
            self._check_policy(name, version)
            try:
                loaded = await self._build(name, version)
            except LoadFailed as exc:
                self._lazy_failed_at[(name, version)] = time.monotonic()
                raise NotReady(exc.message, retry_after_s=int(LAZY_RETRY_S)) from None
            self._lazy_failed_at.pop((name, version), None)
            kept[version] = loaded
            log.info("%s v%d loaded alongside v%d (version policy)", name, version, max(self._serving[name]))
            return loaded

    # ---- lookup ------------------------------------------------------------------------------------
    def get(self, name: str, version: int | None = None) -> LoadedVersion:
        serving = self._serving.get(name)
        if not serving:
            on_disk = self.disk.on_disk.get(name)
            if on_disk is None:
                raise NotFound(f"unknown model {name!r}; available: {sorted(self._serving)}")
            states = {v: self._states.get((name, v)) for v in on_disk}
            if any(s is not None and s.state is VersionStatus.LOADING for s in states.values()):
                raise NotReady(f"model {name!r} is loading")
            reasons = "; ".join(f"v{v}: {s.reason}" for v, s in states.items() if s and s.reason)
            raise NotReady(f"model {name!r} is not loaded" + (f" ({reasons})" if reasons else ""))
        if version is None:
            return serving[max(serving)]
        if version in serving:
            return serving[version]
        kept = self._extra.get(name, {})
        if version in kept:
            return kept[version]
        raise NotFound(f"version {version} of model {name!r} is not loaded (serving: {sorted({*serving, *kept})})")

    def serving(self) -> list[LoadedVersion]:
        """Every loaded version: the served one of each model and those loaded alongside."""
        return [v for table in (self._serving, self._extra) for versions in table.values() for v in versions.values()]

    def fallback(self, name: str) -> str | None:
        """Why an older version is served when the latest failed to load at start-up (None: it did not)."""
        return self._fallback.get(name)

    def version_states(self) -> dict[str, dict[int, VersionState]]:
        """Read-only view from memory (no disk scan; the landing page reads it per request): every version this
        hub has tried to load, by model, and each model to load that has no version tried yet (empty)."""
        found: dict[str, dict[int, VersionState]] = {name: {} for name in self._wanted}
        for (name, version), state in self._states.items():
            found.setdefault(name, {})[version] = state
        return found

    @property
    def ready(self) -> bool:
        if not self.startup_complete:
            return False
        if not self.settings.strict_readiness:
            return True
        return all(name in self._serving for name in self._wanted)

    def index(self) -> list[dict[str, str]]:
        rows = []
        for name, versions in self.scan().items():
            for version in versions:
                state = self._states.get((name, version))
                status = state.state if state else VersionStatus.UNAVAILABLE
                row = {"name": name, "version": str(version), "state": status.value,
                       "reason": (state.reason if state else "not loaded")}
                rows.append(row)
        return rows
