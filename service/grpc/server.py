"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService` on `GRPC_PORT` (default 8001).

One service definition serves both kinds of client: Triton's `grpc_service.proto` (vendored in protos/) is a
superset of KServe's `grpc_predict_v2.proto` with the same package, service name, RPC names and field
numbers, so KServe clients (ServerLive/Ready, ModelReady, Server/ModelMetadata, ModelInfer) and
`tritonclient.grpc` (plus ModelConfig, ModelStatistics, RepositoryIndex, RepositoryModelLoad/Unload) both
work. The other Triton RPCs (streaming, shared memory, trace and log settings) answer UNIMPLEMENTED.

The server is grpcio's asyncio server on the service's own event loop (benchmarks/grpc_modes.py measured it
against grpcio's thread-pool server), and every call goes through the data plane HTTP uses:
- the data plane's version resolution, admission (the batcher's queue bound -> RESOURCE_EXHAUSTED, checked
  before the tensors are decoded), decoding, `infer` (batching, deadlines, statistics), model metadata,
  statistics' version selection, repository calls and the admin bearer-token rule, and the same errors;
- the client's gRPC deadline becomes the request's deadline (DEADLINE_EXCEEDED, never computed once passed),
  and a cancelled call sets the request's disconnect signal, so it leaves the queue like an HTTP disconnect;
- `grpc.max_receive_message_length` = SERVICE_MAX_REQUEST_BYTES: gRPC refuses a larger message with
  RESOURCE_EXHAUSTED before it is parsed;
- `inference_request_duration_seconds{protocol="grpc", endpoint="/inference.GRPCInferenceService/<RPC>"}`
  with `code` = the HTTP status the same outcome gets on /v2, so the existing alerts and panels count both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf import json_format

from service.dataplane.access import check_admin, check_index_access
from service.dataplane.context import RequestContext, timeout_seconds
from service.dataplane.plane import PLATFORMS, server_metadata, version_number
from service.errors import BadRequest, DeadlineExceeded, NotFound, NotReady, ServiceError
from service.grpc.protos import grpc_service_pb2 as pb
from service.grpc.protos import grpc_service_pb2_grpc as pb_grpc
from service.grpc.protos import model_config_pb2 as mc
from service.grpc.tensors import decode_inputs, encode_outputs, requested_outputs, typed_value_count
from service.oip.stats import model_stats

if TYPE_CHECKING:
    from fastapi import FastAPI

    from service.dataplane.plane import DataPlane
    from service.models.version import LoadedVersion
    from service.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
AUTH_METADATA = "metadata authorization"  # where the bearer token goes, as error messages name it
# Typed `contents` beyond this many values are converted on the work pool (~10 ns a value), not on the loop.
INLINE_VALUES = 65536
# The gRPC status of each HTTP status the service's errors carry (service/errors.py).
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Triton's model_config DataType of each OIP datatype (ModelConfig RPC).
CONFIG_TYPES = {"BOOL": mc.TYPE_BOOL, "UINT8": mc.TYPE_UINT8, "UINT16": mc.TYPE_UINT16, "UINT32": mc.TYPE_UINT32,
                "UINT64": mc.TYPE_UINT64, "INT8": mc.TYPE_INT8, "INT16": mc.TYPE_INT16, "INT32": mc.TYPE_INT32,
                "INT64": mc.TYPE_INT64, "FP16": mc.TYPE_FP16, "FP32": mc.TYPE_FP32, "FP64": mc.TYPE_FP64,
                "BYTES": mc.TYPE_STRING}

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def grpc_status(exc: ServiceError) -> grpc.StatusCode:
    return STATUS_CODES.get(exc.status_code, grpc.StatusCode.INTERNAL)


def _timeout_s(request: pb.ModelInferRequest) -> float | None:
    """OIP `parameters["timeout"]` (microseconds, int64 or double) in seconds, as on REST."""
    if "timeout" not in request.parameters:
        return None
    param = request.parameters["timeout"]
    kind = param.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param", "double_param"):
        raise BadRequest(f"parameters.timeout must be a positive finite number of microseconds, got {param}")
    return timeout_seconds(getattr(param, kind))


@dataclass
class _Labels:
    """What one call records in inference_request_duration_seconds besides its RPC and outcome."""

    model: str = ""
    version: str = ""

    def of(self, loaded: LoadedVersion) -> LoadedVersion:
        self.model, self.version = loaded.name, str(loaded.version)
        return loaded


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The RPCs of `inference.GRPCInferenceService` over the app's hub, work pool, settings and metrics."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.settings: Settings = app.state.settings
        metrics = app.state.metrics
        self._duration = metrics.request_duration
        self._series: dict[tuple[str, int, str, str], Any] = {}  # bounded: RPCs x statuses x loaded models

    @property
    def plane(self) -> DataPlane:
        return self.app.state.dataplane

    # ---- one call: errors -> gRPC status, duration -> metrics -----------------------------------------
    async def _serve(self, rpc: str, handler: Callable[[Req, grpc.aio.ServicerContext, _Labels], Awaitable[Resp]],
                     request: Req, context: grpc.aio.ServicerContext) -> Resp:
        started = time.perf_counter()
        labels = _Labels()
        status = 500
        try:
            response = await handler(request, context, labels)
            status = 200
            return response
        except ServiceError as exc:
            # The status /v2 answers for the same outcome (a rejected OIP request is a 400 there, as in Triton).
            status = 400 if exc.status_code == 422 else exc.status_code
            retry_after = exc.headers.get("Retry-After")  # 429/503: when to come back, as on REST
            await context.abort(grpc_status(exc), exc.message,
                                trailing_metadata=(("retry-after", retry_after),) if retry_after else ())
            raise  # abort raises; unreachable
        except asyncio.CancelledError:
            # The client cancelled, or its deadline passed in gRPC's core: nothing goes back either way.
            remaining = context.time_remaining()
            status = 504 if remaining is not None and remaining <= 0 else 499
            raise
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            log.exception("unhandled error in gRPC %s", rpc)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__})")
            raise
        finally:
            self._observe(rpc, status, labels, time.perf_counter() - started)

    def _observe(self, rpc: str, status: int, labels: _Labels, seconds: float) -> None:
        key = (rpc, status, labels.model, labels.version)
        series = self._series.get(key)
        if series is None:  # labels() costs a lock and a kwargs walk: once per series, not per call
            series = self._series[key] = self._duration.labels(
                endpoint=f"/{SERVICE_NAME}/{rpc}", method="POST", code=str(status), model=labels.model,
                version=labels.version, protocol="grpc")
        series.observe(seconds)

    # ---- health and metadata ----------------------------------------------------------------------------
    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ServerLiveResponse:
        return await self._serve("ServerLive", self._live, request, context)

    async def _live(self, request: pb.ServerLiveRequest, context: Any, labels: _Labels) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
                          ) -> pb.ServerReadyResponse:
        return await self._serve("ServerReady", self._ready, request, context)

    async def _ready(self, request: pb.ServerReadyRequest, context: Any, labels: _Labels) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.hub.ready)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ModelReadyResponse:
        return await self._serve("ModelReady", self._model_ready, request, context)

    async def _model_ready(self, request: pb.ModelReadyRequest, context: Any, labels: _Labels
                           ) -> pb.ModelReadyResponse:
        version = version_number(request.version)
        try:
            labels.of(self.plane.resolve(request.name, version))
        except (NotFound, NotReady):  # a yes/no question over gRPC (Triton answers false, not an error)
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
                             ) -> pb.ServerMetadataResponse:
        return await self._serve("ServerMetadata", self._server_metadata, request, context)

    async def _server_metadata(self, request: pb.ServerMetadataRequest, context: Any, labels: _Labels
                               ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**server_metadata(self.settings))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
                            ) -> pb.ModelMetadataResponse:
        return await self._serve("ModelMetadata", self._model_metadata, request, context)

    async def _model_metadata(self, request: pb.ModelMetadataRequest, context: Any, labels: _Labels
                              ) -> pb.ModelMetadataResponse:
        loaded = labels.of(self.plane.resolve(request.name, version_number(request.version)))
        meta = self.plane.model_metadata(loaded)  # REST's answer; the message has no `parameters`
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]], outputs=[tensor(**t) for t in meta["outputs"]])

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
                          ) -> pb.ModelConfigResponse:
        return await self._serve("ModelConfig", self._model_config, request, context)

    async def _model_config(self, request: pb.ModelConfigRequest, context: Any, labels: _Labels
                            ) -> pb.ModelConfigResponse:
        """The part of Triton's model configuration a client reads (perf_analyzer: batching and tensors)."""
        loaded = labels.of(self.plane.resolve(request.name, version_number(request.version)))
        graph = loaded.manifest.primary
        batch = loaded.manifest.batching.max_batch_size if graph.batchable else 0

        def dims(shape: list[int]) -> list[int]:
            return shape[1:] if batch else shape  # Triton's dims leave out the batch axis when batching

        config = mc.ModelConfig(
            name=loaded.name, platform=PLATFORMS[graph.format], max_batch_size=batch,
            input=[mc.ModelInput(name=t.name, data_type=CONFIG_TYPES[t.datatype], dims=dims(t.shape))
                   for t in graph.inputs],
            output=[mc.ModelOutput(name=t.name, data_type=CONFIG_TYPES[t.datatype], dims=dims(t.shape))
                    for t in graph.outputs])
        if batch:
            config.dynamic_batching.max_queue_delay_microseconds = int(
                loaded.manifest.batching.max_queue_delay_ms * 1000)
        return pb.ModelConfigResponse(config=config)

    # ---- inference ----------------------------------------------------------------------------------------
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ModelInferResponse:
        return await self._serve("ModelInfer", self._infer, request, context)

    async def _infer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext, labels: _Labels
                     ) -> pb.ModelInferResponse:
        plane = self.plane
        version = version_number(request.model_version)
        loaded = labels.of(plane.resolve(request.model_name, version))
        plane.check_admission(loaded)  # a full queue: refused before decoding (HTTP: before reading the body)
        ctx = RequestContext(deadline=self._deadline(context, request))
        # A cancelled call leaves the queue (grpc.aio also cancels this task; the signal covers a call whose
        # cancellation arrives while its task is between awaits).
        context.add_done_callback(lambda done: ctx.disconnected.set() if done.cancelled() else None)
        # Raw contents are np.frombuffer views (nothing to compute); many typed values go to the work pool.
        inputs = await plane.decode(decode_inputs, request, inline=typed_value_count(request) <= INLINE_VALUES,
                                    ctx=ctx, what="gRPC tensor decoding")
        current = plane.resolve(request.model_name, version)
        if current is not loaded:  # a reload swapped versions while the pool decoded: the one serving now
            loaded = labels.of(current)
        chosen = requested_outputs(request, [t.name for t in loaded.manifest.primary.outputs])
        outputs = await plane.infer(loaded, inputs, ctx)
        response = pb.ModelInferResponse(model_name=loaded.name, model_version=str(loaded.version), id=request.id)
        encode_outputs(response, outputs, chosen)
        return response

    @staticmethod
    def _deadline(context: grpc.aio.ServicerContext, request: pb.ModelInferRequest) -> float | None:
        """The gRPC deadline (and OIP `parameters.timeout`, the earlier wins) on `time.monotonic()`'s clock."""
        now = time.monotonic()
        deadlines = []
        remaining = context.time_remaining()
        if remaining is not None:
            if remaining <= 0:
                raise DeadlineExceeded("the call's deadline passed before it was queued")
            deadlines.append(now + remaining)
        timeout = _timeout_s(request)
        if timeout is not None:
            deadlines.append(now + timeout)
        return min(deadlines) if deadlines else None

    # ---- Triton's statistics and repository extensions ---------------------------------------------------
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
                              ) -> pb.ModelStatisticsResponse:
        return await self._serve("ModelStatistics", self._statistics, request, context)

    async def _statistics(self, request: pb.ModelStatisticsRequest, context: Any, labels: _Labels
                          ) -> pb.ModelStatisticsResponse:
        """As GET /v2/models[/{m}[/versions/{v}]]/stats: every loaded version, a model's, or one version."""
        response = pb.ModelStatisticsResponse()
        for loaded in self.plane.stats_versions(request.name, version_number(request.version)):
            # The REST extension's JSON (service/oip/stats.py), field for field the same message.
            json_format.ParseDict(model_stats(loaded), response.model_stats.add())
        return response

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
                              ) -> pb.RepositoryIndexResponse:
        return await self._serve("RepositoryIndex", self._index, request, context)

    async def _index(self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext, labels: _Labels
                     ) -> pb.RepositoryIndexResponse:
        check_index_access(self.settings, _authorization(context), AUTH_METADATA)
        rows = self.plane.index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest,
                                  context: grpc.aio.ServicerContext) -> pb.RepositoryModelLoadResponse:
        return await self._serve("RepositoryModelLoad", self._load, request, context)

    async def _load(self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext,
                    labels: _Labels) -> pb.RepositoryModelLoadResponse:
        self._require_admin(context)
        version = None
        if "version" in request.parameters:  # as REST's {"parameters": {"version": "N"}}
            param = request.parameters["version"]
            kind = param.WhichOneof("parameter_choice")
            if kind not in ("int64_param", "string_param"):
                raise BadRequest("parameters.version must be an int64 or a string of digits")
            version = version_number(str(getattr(param, kind)))
        labels.of(await self.plane.load(request.model_name, version))
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest,
                                    context: grpc.aio.ServicerContext) -> pb.RepositoryModelUnloadResponse:
        return await self._serve("RepositoryModelUnload", self._unload, request, context)

    async def _unload(self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext,
                      labels: _Labels) -> pb.RepositoryModelUnloadResponse:
        self._require_admin(context)
        await self.plane.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def _require_admin(self, context: grpc.aio.ServicerContext) -> None:
        check_admin(self.settings, _authorization(context), AUTH_METADATA)


def _authorization(context: grpc.aio.ServicerContext) -> str:
    """The call's `authorization` metadata (HTTP's Authorization header), or ""."""
    return next((str(value) for key, value in context.invocation_metadata() or () if key == "authorization"), "")


def listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class GrpcServer:
    """grpc.aio's server on the running loop: `start()` in the app's lifespan, `begin_drain()` from the SIGTERM
    handler (stop taking calls at once, as the HTTP listener does), `stop()` before the hub drains."""

    def __init__(self, app: FastAPI, host: str, port: int, grace_s: float) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.grace_s = grace_s
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> int:
        settings: Settings = self.app.state.settings
        self._loop = asyncio.get_running_loop()
        server = grpc.aio.server(options=[
            # The REST body limit, enforced by gRPC's core before the message is parsed (RESOURCE_EXHAUSTED).
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.max_send_message_length", -1),
            # gRPC sets SO_REUSEPORT by default: a second server would share the port silently.
            ("grpc.so_reuseport", 0),
        ])
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(self.app), server)
        address = listen_address(self.host, self.requested_port)
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise RuntimeError(f"gRPC cannot listen on {address} ({exc}): set GRPC_PORT to a free port, or 0 to "
                               "serve HTTP only") from None
        await server.start()
        self._server = server
        log.info("gRPC (inference.GRPCInferenceService) listening on %s", listen_address(self.host, self.port))
        return self.port

    def begin_drain(self) -> None:
        """Safe from a signal handler: schedules `server.stop(grace)` on the loop (new calls are refused,
        calls in flight get `grace_s` to finish)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop_task)

    def _stop_task(self) -> asyncio.Task | None:
        if self._stopping is None and self._server is not None:
            log.info("gRPC: draining (grace %.0f s)", self.grace_s)
            self._stopping = asyncio.get_running_loop().create_task(self._server.stop(self.grace_s))
        return self._stopping

    async def stop(self) -> None:
        task = self._stop_task()
        if task is not None:
            await task
