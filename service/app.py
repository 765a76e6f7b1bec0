"""The composition root: settings, metrics, the model hub, work pool and data plane, the HTTP front, routes and
error handlers (service/http), the lifespan (load, gRPC, drain)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from service import __version__, gc_tuning
from service.dataplane.plane import DataPlane
from service.dataplane.workpool import WorkPool
from service.families import description, metric_builders, plugins
from service.http.docs_ui import install_docs
from service.http.errors import install_error_handlers
from service.http.landing import router as landing_router
from service.http.middleware import ServiceApp, ServiceMiddleware
from service.http.openapi import install_openapi
from service.metrics import Metrics
from service.models.hub import ModelHub
from service.oip.fastpath import InferFastPath
from service.oip.routes import repository_router
from service.oip.routes import router as oip_router
from service.oip.stats import router as stats_router
from service.rollouts.controller import RolloutController
from service.rollouts.middleware import RolloutMiddleware
from service.rollouts.routes import router as rollouts_router
from service.runtimes import resolve_device
from service.runtimes.torchscript import apply_process_settings
from service.settings import Settings

log = logging.getLogger(__name__)
LOOP_LAG_INTERVAL_S = 0.05


async def watch_loop_lag(metrics: Metrics, interval_s: float = LOOP_LAG_INTERVAL_S) -> None:
    """Observe how late a fixed-interval sleep wakes: anything blocking the loop shows up as lag."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        metrics.loop_lag.observe(max(0.0, loop.time() - due))


def create_app(settings: Settings | None = None, *, grpc_listen: tuple[str, int] | None = None) -> FastAPI:
    """The app; with `grpc_listen` (host, port), its lifespan also serves gRPC on that address (service/grpc)."""
    settings = settings or Settings()
    metrics = Metrics(metric_builders())
    families = plugins()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        apply_process_settings(settings.cpu_threads)
        gc_tuning.apply_thresholds(gc_tuning.parse_thresholds(settings.gc_thresholds))
        metrics.gc_pauses.install()
        if settings.gc_freeze:
            gc_tuning.freeze("start-up")  # imports and the app; each model load freezes again (models/hub.py)
        hub = ModelHub(settings, metrics, families, resolve_device(settings.device))
        app.state.hub = hub
        app.state.workpool = WorkPool(metrics, workers=settings.work_threads, max_pending=settings.max_pending_work)
        app.state.dataplane = DataPlane(hub, app.state.workpool, settings)  # what every protocol calls
        rollouts.attach(hub, app.state.workpool)  # rollouts: the automatic policy and shadow copies need them
        grpc_server = None
        if grpc_listen is not None:  # `python -m service` only: Ray replicas and in-process apps serve HTTP alone
            from service.grpc.server import GrpcServer  # grpcio is imported only where gRPC is served

            grpc_server = app.state.grpc = GrpcServer(app, *grpc_listen, grace_s=settings.graceful_timeout_s)
            await grpc_server.start()
        # Load in the background so that liveness answers at once; readiness waits for warm-up.
        loading = asyncio.get_running_loop().create_task(hub.start())
        lag_watch = asyncio.get_running_loop().create_task(watch_loop_lag(metrics))
        try:
            yield
        finally:
            lag_watch.cancel()
            if not loading.done():
                loading.cancel()
            if grpc_server is not None:  # calls in flight finish (the SIGTERM handler already stopped new ones)
                await grpc_server.stop()
            await rollouts.close()  # shadow copies and policy loops stop before the versions drain
            await hub.shutdown()
            app.state.workpool.shutdown()
            metrics.gc_pauses.uninstall()

    app = ServiceApp(
        title="Research model inference service",
        version=__version__,
        description=description(),  # from the families' declarations (service/families)
        lifespan=lifespan,
        # FastAPI's native OpenTelemetry checks the global providers on every request; off unless asked for.
        telemetry=None if settings.otel_telemetry else {"tracing": False, "metrics": False, "logs": False},
        docs_url=None, redoc_url=None,  # service/http/docs_ui.py: the same pages with assets served from here
    )
    app.state.settings = settings
    app.state.metrics = metrics
    rollouts = app.state.rollouts = RolloutController(metrics)  # service/rollouts: shadow / canary / promote
    install_error_handlers(app)
    install_openapi(app, families)  # error statuses and shapes, examples from the served versions
    install_docs(app, settings)  # /docs and /redoc without a CDN
    app.include_router(landing_router)  # / : models and their states, links
    app.include_router(stats_router)  # before oip_router: /v2/models/stats is not a model named "stats"
    app.include_router(oip_router)
    app.include_router(repository_router)
    app.include_router(rollouts_router)  # /admin/rollouts/{model}
    for family in families.values():
        if family.router is not None:
            app.include_router(family.router)

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        return Response(metrics.page.render(), media_type=CONTENT_TYPE_LATEST)

    # In front of FastAPI: the fast path and the routed path share the body bound, metrics and errors.
    # RolloutMiddleware: X-Model-Version on every answer, and the rollouts' live figures and shadow copies.
    app.front = ServiceMiddleware(RolloutMiddleware(InferFastPath(app.routed), rollouts), metrics=metrics,
                                  max_body=settings.max_request_bytes, replica=settings.replica_name)
    return app
