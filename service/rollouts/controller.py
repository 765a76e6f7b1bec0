"""The rollout controller: one per app (`app.state.rollouts`). Routes requests between the baseline (the
served version) and a candidate, runs shadow copies off the response path, keeps the per-version comparison,
promotes, ends, and applies the automatic policy.

Routing happens where a request is resolved to a version (`service.http.request.resolve_version`, the OIP
`_lookup`): only task requests (POST routes without the admin token) and the fan-out writes (FANOUT_ROUTES)
take part; metadata and other admin routes see the served version. A `?version=` (or OIP `/versions/N`)
request gets that version, outside the rollout.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from service.errors import InvalidInput, NotFound, ServiceError
from service.families import specs
from service.http.auth import require_admin
from service.rollouts import quality
from service.rollouts.shadow import ShadowCopies
from service.rollouts.state import Policy, Rollout, RolloutBody, Ticket

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.types import ASGIApp

    from service.metrics import Metrics
    from service.models.hub import ModelHub
    from service.models.version import LoadedVersion

log = logging.getLogger(__name__)

ROLLOUT_KEY_HEADER = "x-rollout-key"
# Writes every version of a rollout must see (the families' `fanout_routes`, e.g. ground truth scored against
# each version's own answers).
FANOUT_ROUTES = frozenset(route for spec in specs().values() for route in spec.fanout_routes)
# Requests tied to the version that made their input (the families' `version_pinned_routes`): neither split
# nor copied.
NOT_ROUTED = frozenset(route for spec in specs().values() for route in spec.version_pinned_routes)


def _requires_admin(route: Any) -> bool:
    return any(getattr(dep, "dependency", None) is require_admin for dep in getattr(route, "dependencies", ()))


class RolloutController(ShadowCopies):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.m = metrics.rollouts
        self.rollouts: dict[str, Rollout] = {}
        self.ended: dict[str, dict[str, Any]] = {}  # the last report of each model's finished rollout
        self.replay_app: ASGIApp | None = None  # set by RolloutMiddleware: the app behind it
        self.live_in_flight = 0
        self._idle: asyncio.Event | None = None
        self._hub: ModelHub | None = None
        self._workpool: Any = None

    @property
    def active(self) -> bool:
        return bool(self.rollouts)

    # ---- live requests (RolloutMiddleware) --------------------------------------------------------------
    def live_started(self) -> None:
        self.live_in_flight += 1

    def live_finished(self) -> None:
        self.live_in_flight -= 1
        if self.live_in_flight == 0 and self._idle is not None:
            self._idle.set()

    def route(self, request: Request, loaded: LoadedVersion, explicit: bool) -> LoadedVersion:
        """The version that answers `request` (the served `loaded`, or the rollout's candidate)."""
        state = request.scope.setdefault("state", {})
        replay: Ticket | None = state.get("rollout_replay")
        if replay is not None:  # a shadow copy: the candidate or nothing
            return self._hub_of(request).get(replay.rollout.model, replay.version)
        if explicit or not self.rollouts:
            return loaded
        rollout = self.rollouts.get(loaded.name)
        if rollout is None or loaded.version != rollout.baseline:
            return loaded
        ticket: Ticket | None = state.get("rollout")
        if ticket is None or ticket.rollout is not rollout:  # (OIP looks the version up twice per request)
            ticket = self._decide(request, rollout)
            if ticket is None:
                return loaded
            state["rollout"] = ticket
        if ticket.version == loaded.version:
            return loaded
        try:
            return self._hub_of(request).get(loaded.name, ticket.version)
        except ServiceError:  # the candidate went away between the decision and now: the served one answers
            ticket.version = loaded.version
            return loaded

    def _decide(self, request: Request, rollout: Rollout) -> Ticket | None:
        route = request.scope.get("route")
        path = getattr(route, "path", "")
        if request.method != "POST" or path in NOT_ROUTED:
            return None
        if path in FANOUT_ROUTES:  # the baseline answers, the candidate gets a copy, in both modes
            return Ticket(rollout, rollout.baseline, replay=True, compare=False, fanout=True)
        if _requires_admin(route):
            return None
        if rollout.mode == "shadow":
            sampled = rollout.shadow_percent >= 100 or random.random() * 100 < rollout.shadow_percent  # noqa: S311
            return Ticket(rollout, rollout.baseline, replay=sampled, compare=sampled)
        key = request.headers.get(ROLLOUT_KEY_HEADER)
        if key:  # sticky: the same client key lands on the same side while the percent stays
            digest = hashlib.blake2b(f"{rollout.model}\0{key}".encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest, "big") % 10_000 / 100
        else:
            bucket = random.random() * 100  # noqa: S311 - a traffic split, not a secret
        version = rollout.candidate if bucket < rollout.percent else rollout.baseline
        return Ticket(rollout, version, replay=False, compare=False)

    def record_live(self, ticket: Ticket, status: int, seconds: float) -> None:
        if ticket.fanout:  # observations are not inference: their latency would blur the comparison
            return
        rollout = ticket.rollout
        error = status >= 500
        rollout.path_stats(ticket.version, "live").add(seconds, error)
        labels = (rollout.model, str(ticket.version), rollout.role(ticket.version), "live")
        self.m.requests.labels(*labels, "error" if error else "ok").inc()
        self.m.duration.labels(*labels).observe(seconds)

    # ---- admin ------------------------------------------------------------------------------------------
    def _hub_of(self, request: Request) -> ModelHub:
        return request.app.state.hub

    def attach(self, hub: ModelHub, workpool: Any) -> None:
        self._hub, self._workpool = hub, workpool

    async def start(self, hub: ModelHub, model: str, body: RolloutBody) -> Rollout:
        """Load and warm the candidate alongside the served version (never swapping), then route."""
        served = hub.get(model)
        if body.candidate == served.version:
            raise InvalidInput(f"version {body.candidate} of {model!r} is the served one: name another candidate")
        existing = self.rollouts.get(model)
        if existing is not None and existing.candidate != body.candidate:
            raise InvalidInput(f"{model!r} already has a rollout of version {existing.candidate}: end it first "
                               f"(DELETE /admin/rollouts/{model})")
        if existing is not None:  # same candidate: change mode / percent / policy in place
            self._stop_policy(existing)
            existing.mode, existing.percent, existing.policy = body.mode, body.percent, body.policy
            existing.shadow_percent = body.shadow_percent
            self._export_state(existing)
            self._start_policy(existing)
            self._decide_log(existing, "update", f"{body.mode} {body.percent:g} %")
            return existing
        candidate, loaded_here = await self._load_alongside(hub, model, body.candidate)
        registry = self.metrics.registry
        rollout = Rollout(model=model, family=served.manifest.family, baseline=served.version,
                          candidate=candidate.version, mode=body.mode, percent=body.percent, policy=body.policy,
                          shadow_percent=body.shadow_percent,
                          loaded_here=loaded_here, quality_at_start=await asyncio.to_thread(
                              quality.snapshot, registry, model), queue=asyncio.Queue(body.shadow_queue))
        rollout.tasks.append(asyncio.get_running_loop().create_task(self._shadow_worker(rollout)))
        self.rollouts[model] = rollout
        self.ended.pop(model, None)
        self._export_state(rollout)
        self._start_policy(rollout)
        self._decide_log(rollout, "start", f"{body.mode} v{candidate.version} beside v{served.version}")
        return rollout

    async def _load_alongside(self, hub: ModelHub, model: str, version: int) -> tuple[LoadedVersion, bool]:
        """The candidate, loaded and warmed beside the served version if it is not loaded yet. Unlike
        `hub.acquire`, not limited by the version policy: a candidate is usually newer than the served version
        (and `hub.load` would swap it in at once). A later `hub.load` of another version may prune it."""
        try:
            return hub.get(model, version), False
        except NotFound:
            pass
        async with hub._locks.setdefault(model, asyncio.Lock()):  # after any load/unload of this model
            versions = hub.scan().get(model, [])
            if version not in versions:
                raise NotFound(f"model {model!r} has no version {version} (on disk: {versions})")
            kept = hub._extra.setdefault(model, {})
            if version in kept:
                return kept[version], False
            loaded = await hub._build(model, version)  # opened and warmed up; LoadFailed (400) otherwise
            kept[version] = loaded
            log.info("%s v%d loaded beside the served version for a rollout", model, version)
            return loaded, True

    async def promote(self, hub: ModelHub, model: str, decision: str = "promote", why: str = "") -> dict[str, Any]:
        """The candidate becomes the served version: it is loaded already, so `hub.load` swaps at once and
        drains the old one (requests resolved to it move to the new one: `follow_swap`)."""
        rollout = self._get(model)
        await hub.load(model, rollout.candidate)
        return await self._finish(rollout, decision, "promoted", why)

    async def end(self, hub: ModelHub, model: str, decision: str = "end", why: str = "") -> dict[str, Any]:
        """Stop routing; the candidate is unloaded if this rollout loaded it (and nothing else keeps it)."""
        rollout = self._get(model)
        report = await self._finish(rollout, decision, "rolled_back" if decision == "auto_rollback" else "ended", why)
        if rollout.loaded_here:
            async with hub._locks.setdefault(model, asyncio.Lock()):
                kept = hub._extra.get(model, {})
                loaded = kept.get(rollout.candidate)
                if loaded is not None and not hub._policy_keeps(model, rollout.candidate):
                    del kept[rollout.candidate]
                    hub._retire(loaded)  # drains: copies and requests in flight on it finish first
        return report

    def _get(self, model: str) -> Rollout:
        rollout = self.rollouts.get(model)
        if rollout is None:
            raise NotFound(f"model {model!r} has no rollout running")
        return rollout

    async def _finish(self, rollout: Rollout, decision: str, state: str, why: str = "") -> dict[str, Any]:
        if self.rollouts.get(rollout.model) is rollout:
            del self.rollouts[rollout.model]
        self._decide_log(rollout, decision, f"v{rollout.candidate} {state}" + (f": {why}" if why else ""))
        current = asyncio.current_task()
        for task in rollout.tasks:
            if task is not current:
                task.cancel()
        while not rollout.queue.empty():
            rollout.queue.get_nowait()
            self._drop(rollout, "ended")
        m = self.m
        m.active.labels(rollout.model, rollout.mode).set(0)
        m.percent.labels(rollout.model).set(0)
        m.shadow_queued.labels(rollout.model).set(0)
        m.role.labels(rollout.model, str(rollout.baseline), "baseline").set(0)
        m.role.labels(rollout.model, str(rollout.candidate), "candidate").set(0)
        report = await self.report(rollout)
        report["state"] = state
        self.ended[rollout.model] = report
        return report

    def _export_state(self, rollout: Rollout) -> None:
        m = self.m
        for mode in ("shadow", "canary"):
            m.active.labels(rollout.model, mode).set(1 if mode == rollout.mode else 0)
        m.percent.labels(rollout.model).set(rollout.percent if rollout.mode == "canary" else 0)
        m.role.labels(rollout.model, str(rollout.baseline), "baseline").set(1)
        m.role.labels(rollout.model, str(rollout.candidate), "candidate").set(1)

    def _decide_log(self, rollout: Rollout, decision: str, why: str) -> None:
        rollout.decisions.append({"at": time.time(), "decision": decision, "why": why})
        self.m.decisions.labels(rollout.model, decision).inc()
        log.warning("rollout %s: %s (%s)", rollout.model, decision, why)

    # ---- the comparison ---------------------------------------------------------------------------------
    async def report(self, rollout: Rollout) -> dict[str, Any]:
        now = await asyncio.to_thread(quality.snapshot, self.metrics.registry, rollout.model)
        versions: dict[str, Any] = {}
        for version in (rollout.baseline, rollout.candidate):
            versions[str(version)] = {
                "role": rollout.role(version),
                "live": rollout.path_stats(version, "live").summary(),
                "shadow": rollout.path_stats(version, "shadow").summary() if version == rollout.candidate else None,
                "quality": quality.figures(rollout.family, quality.difference(now, rollout.quality_at_start,
                                                                              str(version))),
            }
        comparison: dict[str, Any] = {"compared": rollout.compared}
        if rollout.abs_difference_n:
            comparison["mean_abs_difference"] = rollout.abs_difference_sum / rollout.abs_difference_n
        if rollout.agreement_n:
            comparison["agreement_share"] = rollout.agreed / rollout.agreement_n
        return {
            "model": rollout.model, "family": rollout.family, "state": "running", "mode": rollout.mode,
            "percent": rollout.percent if rollout.mode == "canary" else 0, "baseline": str(rollout.baseline),
            "candidate": str(rollout.candidate), "started_at": rollout.started_at,
            "policy": rollout.policy.model_dump() if rollout.policy else None,
            "shadow": {"percent": rollout.shadow_percent, "queued": rollout.queue.qsize(),
                       "capacity": rollout.queue.maxsize, "run": rollout.shadow_run, "dropped": dict(rollout.dropped)},
            "versions": versions, "comparison": comparison, "decisions": list(rollout.decisions),
        }

    # ---- automatic policy -------------------------------------------------------------------------------
    def _start_policy(self, rollout: Rollout) -> None:
        if rollout.policy is not None:
            rollout.tasks.append(asyncio.get_running_loop().create_task(self._policy_loop(rollout)))

    def _stop_policy(self, rollout: Rollout) -> None:
        keep = []
        for task in rollout.tasks:
            if task.get_coro().__name__ == "_policy_loop":  # type: ignore[union-attr]
                task.cancel()
            else:
                keep.append(task)
        rollout.tasks = keep

    async def _policy_loop(self, rollout: Rollout) -> None:
        policy = rollout.policy
        assert policy is not None
        while self.rollouts.get(rollout.model) is rollout:
            await asyncio.sleep(policy.interval_s)
            if self.rollouts.get(rollout.model) is not rollout or self._hub is None:
                return
            verdict = decide(policy, await self.report(rollout), str(rollout.candidate), str(rollout.baseline))
            if verdict is None:
                continue
            decision, why = verdict
            try:
                if decision == "auto_promote":
                    await self.promote(self._hub, rollout.model, decision, why)
                else:
                    await self.end(self._hub, rollout.model, decision, why)
            except ServiceError as exc:  # e.g. a concurrent end: logged, the loop stops
                log.error("rollout %s: %s failed: %s", rollout.model, decision, exc.message)
            return

    async def close(self) -> None:
        for rollout in list(self.rollouts.values()):
            for task in rollout.tasks:
                task.cancel()
        self.rollouts.clear()


def decide(policy: Policy, report: dict[str, Any], candidate: str, baseline: str) -> tuple[str, str] | None:
    """The policy's verdict on a report: ("auto_rollback" | "auto_promote", why) or None. Rollback first."""
    cand, base = report["versions"][candidate], report["versions"][baseline]
    seen = [cand["live"]] + ([cand["shadow"]] if cand["shadow"] else [])
    requests = sum(s["requests"] for s in seen)
    errors = sum(s["errors"] for s in seen)
    if requests >= policy.min_requests:
        if policy.max_error_rate is not None and errors / requests > policy.max_error_rate:
            return "auto_rollback", f"error rate {errors / requests:.3f} > {policy.max_error_rate}"
        p99s = [s["latency_p99_ms"] for s in seen if s["latency_p99_ms"] is not None]
        if policy.max_p99_ms is not None and p99s and max(p99s) > policy.max_p99_ms:
            return "auto_rollback", f"p99 {max(p99s):.1f} ms > {policy.max_p99_ms} ms"
    if policy.promote_margin is None:
        return None
    qc, qb = cand["quality"], base["quality"]
    figure = qc.get("figure")
    if not figure or qc.get(figure) is None or qb.get(figure) is None:
        return None
    if qc["scored"] < policy.min_scored or qb["scored"] < policy.min_scored:
        return None
    c, b = qc[figure], qb[figure]
    better = c > b * (1 + policy.promote_margin) if qc.get("higher_is_better") else c < b * (1 - policy.promote_margin)
    if better:
        return "auto_promote", f"{figure} {c:.4g} vs baseline {b:.4g} (margin {policy.promote_margin})"
    return None
