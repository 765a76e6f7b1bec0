"""The service on Ray Serve: one deployment per model family (each replica runs the service's own app,
restricted to that family's models with SERVICE_MODELS: same routes, batcher, deadlines, errors, metrics)
behind a thin ingress that routes by path prefix or model name and answers health itself.

    serve run deploy/ray/serve_config.yaml            # or: serve deploy ...; make serve-ray
    serve run deploy.ray.serve_app:build_app repository=/abs/model_repository replicas=2

Application args (serve_config.yaml `args`): repository (absolute, or relative to where the app is built),
replicas (per family, overridable per deployment), num_cpus / num_gpus (per family replica, fractional),
state_dir (state shared by the replicas of a family, e.g. a gallery's SQLite file), metrics_dir (file_sd
targets of every replica's /metrics), graceful_shutdown_timeout_s, settings (extra `Settings` fields),
families (only these), ingress_replicas, env (replica environment variables), autoscaling (with replicas "auto"
or absent: per family or for all, Serve's autoscaling_config sized to the batcher by FamilyPlan.autoscaling_config),
max_ongoing_requests / max_queued_requests (instead of the manifest-derived sizes). The ingress holds the
replicas' body limit (settings.max_request_bytes): 413 before the body is buffered.
The app may sit under any route_prefix: the ingress routes on the path below it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from deploy.ray.forwarding import ForwardedRequest, ForwardedResponse, call_asgi
from deploy.ray.topology import NOT_RETRIED, FamilyPlan, family_of_path, plan_families
from service.settings import Settings

log = logging.getLogger("ray.serve")
PINNED_THREADS = ("SERVICE_CPU_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
READY_TIMEOUT_S = 5.0
DEFAULT_MAX_BODY: int = Settings.model_fields["max_request_bytes"].default


def _json(status: int, body: Any, replica: str, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status_code=status, media_type="application/json",
                    headers={"x-replica": replica, **(headers or {})})


def _error(path: str, status: int, code: str, message: str, replica: str,
           headers: dict[str, str] | None = None) -> Response:
    """The service's error shape (OIP routes: {"error": "..."}), for answers the ingress makes itself."""
    from service.errors import error_body

    return _json(status, error_body(path, code, message), replica, headers)


def threads_for(num_cpus: float) -> int:
    """Intra-op threads for a replica with `num_cpus` of CPU: its whole share, at least one."""
    return max(1, int(num_cpus))


def pin_threads() -> int:
    """This replica's threads from the CPUs Ray assigned it (the config's ray_actor_options may replace the
    runtime_env that carries PINNED_THREADS, so the replica pins them itself): OMP/MKL and the service's
    intra-op threads (SERVICE_CPU_THREADS -> torch.set_num_threads, ONNX Runtime intra_op_num_threads)."""
    import ray

    assigned = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
    threads = int(os.environ.get("SERVICE_CPU_THREADS") or threads_for(assigned))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))
    return threads


@serve.deployment
class FamilyServer:
    """One replica of a family: the service's app (create_app) run in this actor's event loop."""

    async def __init__(self, family: str, models: list[str], repository: str, state_dir: str,
                       metrics_dir: str | None, settings: dict[str, Any] | None = None) -> None:
        threads = pin_threads()  # before torch / ONNX Runtime are imported by the app
        from service.app import create_app

        context = serve.get_replica_context()
        self.name = f"{context.deployment}#{context.replica_tag}"
        self.settings = Settings(model_repository=Path(repository), models=",".join(models), replica_name=self.name,
                                 state_dir=Path(state_dir) / family, **{"cpu_threads": threads, **(settings or {})})
        self.app = create_app(self.settings)
        self._lifespan = AsyncExitStack()
        await self._lifespan.enter_async_context(self.app.router.lifespan_context(self.app))
        hub = self.app.state.hub
        while not hub.startup_complete:  # a replica takes traffic only once its models are warm
            await asyncio.sleep(0.05)
        if not hub.ready:
            raise RuntimeError(f"{self.name}: models not ready after start-up: {hub.index()}")
        self.metrics_target = None
        if metrics_dir:
            import ray

            from deploy.ray.metrics_targets import MetricsTarget

            self.metrics_target = MetricsTarget(self.app.state.metrics.registry, Path(metrics_dir),
                                                ray.util.get_node_ip_address(), context.deployment,
                                                context.replica_tag, ray.get_runtime_context().get_node_id())
        log.info("%s ready: %s (metrics %s)", self.name, models,
                 self.metrics_target.address if self.metrics_target else "off")

    async def forward(self, request: ForwardedRequest) -> ForwardedResponse:
        return await call_asgi(self.app, request)

    def ready(self) -> bool:
        return bool(self.app.state.hub.ready)

    def describe(self) -> dict[str, Any]:
        target = self.metrics_target
        import torch

        return {"replica": self.name, "pid": os.getpid(), "metrics": target.address if target else None,
                "cpu_threads": self.settings.cpu_threads, "torch_threads": torch.get_num_threads(),
                "omp_threads": os.environ.get("OMP_NUM_THREADS")}

    def check_health(self) -> None:
        if not self.app.state.hub.ready:
            raise RuntimeError(f"{self.name}: models not ready")

    async def __del__(self) -> None:
        # Serve has drained this replica's requests (graceful_shutdown_timeout_s); the hub drains its batchers.
        if self.metrics_target is not None:
            self.metrics_target.close()
        await self._lifespan.aclose()


@serve.deployment
class Ingress:
    """Routes each request to its family deployment and forwards status, headers and body unchanged."""

    def __init__(self, families: dict[str, DeploymentHandle], model_family: dict[str, str],
                 max_body: int = DEFAULT_MAX_BODY) -> None:
        self.families = families
        self.model_family = model_family
        self.max_body = max_body  # the replicas' max_request_bytes: enforced here, before anything is buffered
        context = serve.get_replica_context()
        self.name = f"{context.deployment}#{context.replica_tag}"

    async def __call__(self, request: Request) -> Response:
        path = _app_path(request.scope)
        if path == "/v2/health/live":
            return _json(200, {"live": True}, self.name)
        if path == "/v2/health/ready":
            return await self._ready()
        body = await _bounded_body(request, self.max_body)
        if body is None:
            return _error(path, 413, "payload_too_large", f"request body exceeds the limit of {self.max_body} "
                          "bytes", self.name, {"connection": "close"})
        forwarded = ForwardedRequest(request.method, path, request.url.query.encode(), list(request.headers.raw),
                                     body, (request.client.host, request.client.port) if request.client else None)
        if path == "/v2/models/stats" and request.method == "GET":
            return await self._merged(forwarded, "model_stats")
        if path == "/v2/repository/index" and request.method == "POST":
            return await self._merged(forwarded, None)
        family = family_of_path(path, self.model_family) or min(self.families)
        handle = self.families.get(family)
        if handle is None:
            return _error(path, 404, "not_found", f"no deployment serves {path}", self.name)
        return await self._forward(handle, forwarded, _deadline_s(request))

    async def _forward(self, handle: DeploymentHandle, request: ForwardedRequest,
                       deadline_s: float | None) -> Response:
        path = request.path
        attempts = 1 if path.startswith(NOT_RETRIED) else 2
        for attempt in range(attempts):
            response = handle.forward.remote(request)
            try:
                answer: ForwardedResponse = await asyncio.wait_for(_result(response), deadline_s)
            except TimeoutError:
                response.cancel()
                return _error(path, 504, "deadline_exceeded", "request deadline exceeded before a replica "
                              "answered", self.name)
            except asyncio.CancelledError:  # the HTTP client went away: cancel the replica's request too
                response.cancel()
                raise
            except BackPressureError as exc:  # every replica's max_ongoing + the caller's max_queued are full
                return _error(path, 429, "overloaded", f"all replicas are busy: {exc}", self.name,
                              {"retry-after": "1"})
            except RayActorError as exc:  # the replica died with the request (SIGKILL, node lost)
                if attempt + 1 < attempts:
                    log.warning("replica died during %s, retrying once: %s", path, type(exc).__name__)
                    continue
                return _error(path, 503, "unavailable", f"replica lost: {type(exc).__name__}", self.name,
                              {"retry-after": "1"})
            out = Response(answer.body, status_code=answer.status)
            out.raw_headers = answer.headers  # as the replica sent them (content-length, x-replica, retry-after)
            return out
        raise AssertionError("unreachable")

    async def _ready(self) -> Response:
        async def one(handle: DeploymentHandle) -> bool:
            try:
                return bool(await asyncio.wait_for(_result(handle.ready.remote()), READY_TIMEOUT_S))
            except Exception:  # noqa: BLE001 - any failure means not ready
                return False

        states = dict(zip(self.families, await asyncio.gather(*(one(h) for h in self.families.values())),
                          strict=True))
        ready = all(states.values())
        return _json(200 if ready else 503, {"ready": ready, "deployments": states}, self.name)

    async def _merged(self, request: ForwardedRequest, key: str | None) -> Response:
        """Endpoints over every model (statistics, repository index): one answer per family, concatenated."""
        answers = await asyncio.gather(*(_result(h.forward.remote(request)) for h in self.families.values()))
        failed = next((a for a in answers if a.status != 200), None)
        if failed is not None:
            return Response(failed.body, status_code=failed.status, headers={"x-replica": self.name})
        parts = [json.loads(a.body) for a in answers]
        merged: Any = {key: [row for p in parts for row in p.get(key, [])]} if key else [r for p in parts for r in p]
        return _json(200, merged, self.name)


def _app_path(scope: dict[str, Any]) -> str:
    """The request path below the application's route_prefix (Serve keeps it in the path, adds root_path)."""
    path, root = scope["path"], scope.get("root_path", "").rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root):] or "/"
    return path


async def _bounded_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None once it is known to exceed `limit`: at once from Content-Length, else (chunked)
    as soon as the chunks read so far pass it, without reading the rest. Serve's proxy streams the body to this
    replica chunk by chunk, so nothing beyond the limit (plus one chunk) is held here; the 413 then closes the
    connection (`connection: close`), so the proxy stops reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _result(response: Any) -> Any:
    return await response


def _deadline_s(request: Request) -> float | None:
    """X-Request-Timeout-Ms bounds the whole hop (Ray's queue included); the replica enforces it again."""
    raw = request.headers.get("x-request-timeout-ms")
    try:
        return max(0.0, float(raw)) / 1000 if raw else None
    except ValueError:
        return None  # the replica answers 400/422 for a malformed header


def family_options(plan: FamilyPlan, args: dict[str, Any]) -> dict[str, Any]:
    """Per-family deployment options (serve_config.yaml's `deployments:` entries override them by name)."""
    num_cpus = float(args.get("num_cpus", 0.25))
    threads = str(threads_for(num_cpus))
    env = {**dict.fromkeys(PINNED_THREADS, threads), **{k: str(v) for k, v in args.get("env", {}).items()}}
    actor: dict[str, Any] = {"num_cpus": num_cpus, "runtime_env": {"env_vars": env}}
    if float(args.get("num_gpus", 0)) > 0:
        actor["num_gpus"] = float(args["num_gpus"])
    autoscaling = autoscaling_of(plan.family, args)
    scaling: dict[str, Any] = ({"autoscaling_config": plan.autoscaling_config(autoscaling)} if autoscaling is not None
                               else {"num_replicas": _count(args.get("replicas"))})
    return {
        "name": plan.family,
        **scaling,
        "max_ongoing_requests": int(args.get("max_ongoing_requests") or plan.max_ongoing_requests),
        "max_queued_requests": int(args.get("max_queued_requests") or plan.max_queued_requests),
        "ray_actor_options": actor,
        "graceful_shutdown_timeout_s": float(args.get("graceful_shutdown_timeout_s", 30)),
        "graceful_shutdown_wait_loop_s": 0.5,
        "health_check_period_s": 5,
    }


def autoscaling_of(family: str, args: dict[str, Any]) -> dict[str, Any] | None:
    """The family's autoscaling overrides when it autoscales, else None (a fixed `replicas` count). It autoscales
    when `autoscaling` is given and `replicas` is "auto" or absent; `autoscaling` holds either one dict for every
    family ({min_replicas, max_replicas, ...}) or one per family ({<family>: {...}, ...})."""
    given = args.get("autoscaling")
    if not given or args.get("replicas", "auto") != "auto":
        return None
    if family in given:
        return dict(given[family] or {})
    if any(isinstance(value, dict) for value in given.values()):
        return {}  # per-family dicts that do not name this family: the defaults sized to its batcher
    return dict(given)


def build_app(args: dict[str, Any]) -> serve.Application:
    """The Serve application builder (`import_path: deploy.ray.serve_app:build_app`)."""
    repository = Path(args.get("repository", "model_repository")).resolve()
    plans = plan_families(repository)
    if not plans:
        raise ValueError(f"no model in {repository}")
    state_dir = str(Path(args.get("state_dir", "state/ray")).resolve())
    metrics_dir = args.get("metrics_dir", str(Path(state_dir) / "metrics-targets"))
    metrics_dir = str(Path(metrics_dir).resolve()) if metrics_dir else None
    only = args.get("families")
    handles = {}
    model_family = {}
    for family, plan in sorted(plans.items()):
        if only and family not in only:
            continue
        deployment = FamilyServer.options(**family_options(plan, args))
        handles[family] = deployment.bind(family, plan.models, str(repository), state_dir, metrics_dir,
                                          args.get("settings"))
        model_family.update(dict.fromkeys(plan.models, family))
    ingress = Ingress.options(num_replicas=_count(args.get("ingress_replicas", args.get("replicas"))),
                              max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0.1})
    return ingress.bind(handles, model_family, max_body_of(args))


def _count(replicas: Any) -> int:
    """A fixed replica count; "auto" or absent (autoscaled families) -> 1."""
    return 1 if replicas in (None, "auto") else int(replicas)


def max_body_of(args: dict[str, Any]) -> int:
    """The body limit the ingress enforces: the replicas' `settings.max_request_bytes`, else the environment's
    SERVICE_MAX_REQUEST_BYTES (as the replicas read it), else the service's default."""
    configured = (args.get("settings") or {}).get("max_request_bytes") or os.environ.get("SERVICE_MAX_REQUEST_BYTES")
    return int(configured) if configured else DEFAULT_MAX_BODY
