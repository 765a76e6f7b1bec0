"""The Open Inference Protocol over gRPC (service/grpc) on a real `python -m service` process, with
`tritonclient.grpc` (and a client built from KServe's own .proto): metadata, inference for every family's model
equal to the HTTP answer, statistics, repository index and admin, bad tensors, the message-size limit, a full
queue, a deadline, a cancellation, the SIGTERM drain and the `protocol` label of the metrics."""

from __future__ import annotations

import asyncio
import queue
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from benchmarks.harness import export_tiny, free_port, metric_value
from families.manifest import Manifest

# The messages are tritonclient's own generated classes, never service.grpc.protos: another tritonclient release
# may carry another grpc_service.proto, and protobuf refuses two definitions of one message in a process.

TOKEN = "grpc-s3cret"
SLOW = {"model": "slow", "version": "1", "queue": "model"}


class GrpcServer:
    """A LiveServer plus its gRPC address and clients."""

    def __init__(self, server, port: int) -> None:
        self.server = server
        self.address = f"127.0.0.1:{port}"
        self.grpc = tgrpc.InferenceServerClient(self.address)
        self.http = thttp.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)

    def metrics(self) -> str:
        return httpx.get(f"{self.server.url}/metrics", timeout=30).text


def start(factory, repository: Path, **env: str) -> GrpcServer:
    port = free_port()
    server = factory(repository, env={"GRPC_PORT": str(port), **env})
    return GrpcServer(server, port)


def latest(repository: Path, model: str) -> Manifest:
    versions = sorted(int(p.name) for p in (repository / model).iterdir() if p.name.isdigit())
    return Manifest.read(repository / model / str(versions[-1]))


def sample_inputs(manifest: Manifest, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the primary graph's sample shapes (what /v2 serves for every family, the codec included)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in manifest.primary.inputs:
        shape, dtype = spec.concrete_sample_shape(), spec.numpy_dtype
        if dtype.kind == "f":
            arrays[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[spec.name] = rng.random(shape) < 0.5
        else:
            arrays[spec.name] = rng.integers(0, 2, shape).astype(dtype)
    return arrays


def grpc_inputs(arrays: dict[str, np.ndarray]) -> list[tgrpc.InferInput]:
    tensors = []
    for name, array in arrays.items():
        tensor = tgrpc.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def http_inputs(arrays: dict[str, np.ndarray]) -> list[thttp.InferInput]:
    tensors = []
    for name, array in arrays.items():
        tensor = thttp.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=True)
        tensors.append(tensor)
    return tensors


def status_of(call, *args, **kwargs) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call(*args, **kwargs)
    return caught.value.status()


# ---- every family, one server ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def families(all_families_repository: Path, serve) -> GrpcServer:
    return start(serve, all_families_repository, SERVICE_ADMIN_TOKEN=TOKEN)


def test_health_and_metadata_equal_the_http_answers(families: GrpcServer, all_families_repository: Path) -> None:
    client, http = families.grpc, families.http
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata(as_json=True)
    assert {k: server[k] for k in ("name", "version", "extensions")} == \
        {k: http.get_server_metadata()[k] for k in ("name", "version", "extensions")}
    models = sorted(p.name for p in all_families_repository.iterdir() if p.is_dir())
    assert {"tiny", "traffic", "weld", "water"} <= set(models) and any(m.startswith("imagecodec") for m in models)
    for model in models:
        assert client.is_model_ready(model)
        got = client.get_model_metadata(model, as_json=True)
        want = http.get_model_metadata(model)
        assert got["name"] == want["name"] and got["versions"] == want["versions"]
        assert got["platform"] == want["platform"]
        for kind in ("inputs", "outputs"):
            assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in got[kind]] == \
                [(t["name"], t["datatype"], t["shape"]) for t in want[kind]], (model, kind)
    config = client.get_model_config("tiny").config
    assert config.max_batch_size == latest(all_families_repository, "tiny").batching.max_batch_size
    assert [(i.name, list(i.dims)) for i in config.input] == [("x", [16])]  # Triton's dims: no batch axis
    assert not client.is_model_ready("no-such-model")
    assert status_of(client.get_model_metadata, "no-such-model") == "StatusCode.NOT_FOUND"
    assert status_of(client.get_model_metadata, "tiny", "v1") == "StatusCode.INVALID_ARGUMENT"
    # Triton RPCs this server does not implement say so.
    assert status_of(client.get_system_shared_memory_status) == "StatusCode.UNIMPLEMENTED"


def test_every_family_model_answers_over_grpc_as_over_http(families: GrpcServer,
                                                           all_families_repository: Path, subtests) -> None:
    models = sorted(p.name for p in all_families_repository.iterdir() if p.is_dir())
    for model in models:
        with subtests.test(model=model):
            manifest = latest(all_families_repository, model)
            arrays = sample_inputs(manifest, seed=len(model))
            want = families.http.infer(model, http_inputs(arrays))
            got = families.grpc.infer(model, grpc_inputs(arrays), request_id="req-7")
            response = got.get_response()
            assert response.model_name == model and response.model_version == str(manifest.version)
            assert response.id == "req-7"
            assert len(response.raw_output_contents) == len(manifest.primary.outputs)  # binary, never typed
            for output in manifest.primary.outputs:
                np.testing.assert_array_equal(got.as_numpy(output.name), want.as_numpy(output.name))


def typed_request(model: str, arrays: dict[str, np.ndarray]) -> pb.ModelInferRequest:
    """A request with KServe's typed `contents` (what a client without raw tensors sends)."""
    request = pb.ModelInferRequest(model_name=model)
    for name, array in arrays.items():
        tensor = request.inputs.add(name=name, datatype=np_to_triton_dtype(array.dtype), shape=array.shape)
        field = tensor.contents.bool_contents if array.dtype == np.bool_ else tensor.contents.fp32_contents
        field.extend(array.ravel().tolist())
    return request


def raw_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {o.name: np.frombuffer(response.raw_output_contents[i], triton_to_np_dtype(o.datatype))
            .reshape(list(o.shape)) for i, o in enumerate(response.outputs)}


def test_typed_contents_and_requested_outputs(families: GrpcServer, all_families_repository: Path) -> None:
    """Typed `contents` decode like JSON data on REST: inline when small, on the work pool beyond 65,536
    values (weld, 3 rows: ~93,000); only the requested outputs come back."""
    x = np.random.default_rng(5).standard_normal((2, 16)).astype(np.float32)
    request = typed_request("tiny", {"x": x})
    request.outputs.add(name="norm")
    weld = latest(all_families_repository, "weld")
    rows = {name: np.concatenate([a] * 3) for name, a in sample_inputs(weld, seed=11).items()}
    assert sum(a.size for a in rows.values()) > 65536
    with grpc.insecure_channel(families.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        small = stub.ModelInfer(request, timeout=60)
        large = stub.ModelInfer(typed_request("weld", rows), timeout=120)
    assert [o.name for o in small.outputs] == ["norm"]
    np.testing.assert_array_equal(raw_outputs(small)["norm"],
                                  families.http.infer("tiny", http_inputs({"x": x})).as_numpy("norm"))
    want = families.http.infer("weld", http_inputs(rows))
    for name, got in raw_outputs(large).items():
        np.testing.assert_array_equal(got, want.as_numpy(name))


def test_statistics_and_repository_index_equal_the_http_answers(families: GrpcServer) -> None:
    client, http = families.grpc, families.http
    x = np.ones((1, 16), np.float32)
    for _ in range(3):
        client.infer("tiny", grpc_inputs({"x": x}))
    got = client.get_inference_statistics("tiny", as_json=True)["model_stats"]
    want = http.get_inference_statistics("tiny")["model_stats"]
    assert len(got) == len(want) == 1
    for key in ("name", "version", "inference_count", "execution_count"):
        assert str(got[0][key]) == str(want[0][key]), key
    for key in ("success", "fail", "queue"):
        assert int(got[0]["inference_stats"][key].get("count", 0)) == want[0]["inference_stats"][key]["count"]
    assert int(got[0]["inference_count"]) >= 3
    everything = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {s["name"] for s in everything} == {s["name"] for s in http.get_inference_statistics()["model_stats"]}
    index = client.get_model_repository_index(as_json=True)["models"]
    assert sorted((m["name"], m["version"], m["state"]) for m in index) == \
        sorted((m["name"], m["version"], m["state"]) for m in http.get_model_repository_index())


def test_bad_tensors_are_invalid_argument_naming_the_problem(families: GrpcServer) -> None:
    client = families.grpc

    def refused(arrays: dict[str, np.ndarray], needle: str, model: str = "tiny") -> None:
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, grpc_inputs(arrays))
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", caught.value
        assert needle in caught.value.message(), caught.value.message()

    refused({"x": np.ones((1, 15), np.float32)}, "axis 1 must be 16")
    refused({"x": np.ones((1, 16), np.int64)}, "expected FP32")
    refused({"x": np.full((1, 16), np.nan, np.float32)}, "NaN")
    refused({"z": np.ones((1, 16), np.float32)}, "missing input")
    # raw bytes that do not match the declared shape, and a typed value out of an INT8 tensor's range
    request = pb.ModelInferRequest(model_name="tiny", raw_input_contents=[b"\0" * 60])
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    narrow = pb.ModelInferRequest(model_name="tiny")
    narrow.inputs.add(name="x", datatype="INT8", shape=[1, 1]).contents.int_contents.append(300)
    with grpc.insecure_channel(families.address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for bad, needle in ((request, "needs 64"), (narrow, "must lie in [-128, 127]")):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(bad, timeout=30)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert needle in caught.value.details()
    assert status_of(client.infer, "no-such-model", grpc_inputs({"x": np.ones((1, 16), np.float32)})) \
        == "StatusCode.NOT_FOUND"


def test_kserve_proto_client_is_served(families: GrpcServer, tmp_path: Path) -> None:
    """A client compiled from KServe's own open_inference_grpc.proto (vendored under tests/platform/kserve_proto,
    in a descriptor pool of its own) gets the same answers: the Triton superset is wire-compatible."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from grpc_tools import protoc

    source = Path(__file__).parent / "kserve_proto"
    out = tmp_path / "kserve.pb"
    assert protoc.main(["protoc", f"-I{source}", f"--descriptor_set_out={out}", "open_inference_grpc.proto"]) == 0
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(file)

    def message(name: str) -> type:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}"))

    x = np.random.default_rng(9).standard_normal((3, 16)).astype(np.float32)
    request = message("ModelInferRequest")(model_name="tiny", raw_input_contents=[x.tobytes()])
    request.inputs.add(name="x", datatype="FP32", shape=[3, 16])
    with grpc.insecure_channel(families.address) as channel:
        def call(rpc: str, req: object, reply: str) -> object:
            return channel.unary_unary(f"/inference.GRPCInferenceService/{rpc}",
                                       request_serializer=lambda m: m.SerializeToString(),
                                       response_deserializer=message(reply).FromString)(req, timeout=60)

        assert call("ServerReady", message("ServerReadyRequest")(), "ServerReadyResponse").ready
        meta = call("ModelMetadata", message("ModelMetadataRequest")(name="tiny"), "ModelMetadataResponse")
        assert [t.name for t in meta.outputs] == ["y", "norm"]
        response = call("ModelInfer", request, "ModelInferResponse")
    want = families.http.infer("tiny", http_inputs({"x": x}))
    for index, output in enumerate(response.outputs):
        got = np.frombuffer(response.raw_output_contents[index], np.float32).reshape(list(output.shape))
        np.testing.assert_array_equal(got, want.as_numpy(output.name))


def test_metrics_carry_the_protocol_label(families: GrpcServer) -> None:
    x = np.ones((1, 16), np.float32)
    families.grpc.infer("tiny", grpc_inputs({"x": x}))
    families.http.infer("tiny", http_inputs({"x": x}))
    status_of(families.grpc.infer, "tiny", grpc_inputs({"x": np.ones((1, 3), np.float32)}))
    metrics = families.metrics()
    series = "inference_request_duration_seconds_count"
    grpc_ok = {"protocol": "grpc", "endpoint": "/inference.GRPCInferenceService/ModelInfer", "model": "tiny",
               "version": "1"}
    assert metric_value(metrics, series, {**grpc_ok, "code": "200"}) >= 1
    # INVALID_ARGUMENT is recorded with the status /v2 gives the same request: 400, as Triton answers it
    assert metric_value(metrics, series, {**grpc_ok, "code": "400"}) >= 1
    assert metric_value(metrics, series, {**grpc_ok, "code": "422"}) == 0
    assert metric_value(metrics, series, {"protocol": "http", "model": "tiny", "code": "200"}) >= 1


# ---- admin and limits on the tiny repository ------------------------------------------------------------
def test_repository_load_and_unload_need_the_bearer_token(tiny_repository: Path, live_server) -> None:
    served = start(live_server, tiny_repository, SERVICE_ADMIN_TOKEN=TOKEN)
    client = served.grpc
    assert status_of(client.unload_model, "tiny") == "StatusCode.UNAUTHENTICATED"
    assert status_of(client.unload_model, "tiny", headers={"authorization": "Bearer wrong"}) \
        == "StatusCode.PERMISSION_DENIED"
    assert client.is_model_ready("tiny")
    admin = {"authorization": f"Bearer {TOKEN}"}
    client.unload_model("tiny", headers=admin)
    assert not client.is_model_ready("tiny")
    assert status_of(client.infer, "tiny", grpc_inputs({"x": np.ones((1, 16), np.float32)})) \
        == "StatusCode.UNAVAILABLE"
    client.load_model("tiny", headers=admin)
    assert client.is_model_ready("tiny")
    assert status_of(client.load_model, "no-such-model", headers=admin) == "StatusCode.NOT_FOUND"


def test_oversized_message_is_resource_exhausted_before_decoding(tiny_repository: Path, live_server) -> None:
    served = start(live_server, tiny_repository, SERVICE_MAX_REQUEST_BYTES="65536")
    big = np.ones((1100, 16), np.float32)  # 70,400 bytes of raw tensor data
    assert status_of(served.grpc.infer, "tiny", grpc_inputs({"x": big})) == "StatusCode.RESOURCE_EXHAUSTED"
    small = served.grpc.infer("tiny", grpc_inputs({"x": big[:8]}))  # the server goes on serving
    assert small.as_numpy("y").shape == (8, 4)
    stats = served.http.get_inference_statistics("tiny")["model_stats"][0]
    assert stats["inference_count"] == 8  # the oversized one never reached the batcher


# ---- the slow model: queue bound, deadline, cancellation, drain -----------------------------------------
@pytest.fixture(scope="module")
def slow_repository(tmp_path_factory: pytest.TempPathFactory, slow_checkpoint: Path) -> Path:
    """`slow` (~50 ms a batch on one thread) with a queue bound of 4 requests and batches of up to 4 rows."""
    repository = tmp_path_factory.mktemp("slow-grpc-repo")
    export_tiny(slow_checkpoint, repository, "slow", max_batch_size="4", max_queue_size="4",
                max_queue_delay_ms="0")
    return repository


def busy_calls(client: tgrpc.InferenceServerClient, count: int) -> queue.Queue:
    """`count` calls of 4 rows each in flight; their (result, error) pairs arrive on the queue."""
    done: queue.Queue = queue.Queue()
    for _ in range(count):
        client.async_infer("slow", grpc_inputs({"x": np.ones((4, 16), np.float32)}),
                           callback=lambda result, error: done.put((result, error)))
    return done


def collect(done: queue.Queue, count: int) -> list:
    return [done.get(timeout=120) for _ in range(count)]


def test_deadline_is_deadline_exceeded_and_never_computed(slow_repository: Path, live_server) -> None:
    served = start(live_server, slow_repository, SERVICE_CPU_THREADS="1")
    rows_before = metric_value(served.metrics(), "inference_batch_size_sum", SLOW)
    done = busy_calls(served.grpc, 3)
    time.sleep(0.05)
    late = status_of(served.grpc.infer, "slow", grpc_inputs({"x": np.ones((4, 16), np.float32)}),
                     client_timeout=0.005)
    assert late == "StatusCode.DEADLINE_EXCEEDED"
    assert all(error is None for _, error in collect(done, 3))
    time.sleep(0.5)
    metrics = served.metrics()
    # Exactly the three busy calls' rows were computed; the expired one never reached the model.
    assert metric_value(metrics, "inference_batch_size_sum", SLOW) - rows_before == 12
    dropped = sum(metric_value(metrics, "inference_rejections_total", {**SLOW, "reason": reason})
                  for reason in ("deadline", "disconnected"))
    assert dropped == 1
    assert metric_value(metrics, "inference_request_duration_seconds_count",
                        {"protocol": "grpc", "model": "slow", "code": "504"}) == 1
    # OIP's own timeout parameter (microseconds; tritonclient's `timeout`) is honoured the same way.
    assert status_of(served.grpc.infer, "slow", grpc_inputs({"x": np.ones((4, 16), np.float32)}),
                     timeout=1) == "StatusCode.DEADLINE_EXCEEDED"


def test_cancelled_call_is_dropped_from_the_queue(slow_repository: Path, live_server) -> None:
    served = start(live_server, slow_repository, SERVICE_CPU_THREADS="1")
    done = busy_calls(served.grpc, 3)
    time.sleep(0.05)
    cancelled: queue.Queue = queue.Queue()
    call = served.grpc.async_infer("slow", grpc_inputs({"x": np.ones((4, 16), np.float32)}),
                                   callback=lambda result, error: cancelled.put(error))
    time.sleep(0.02)
    call.cancel()
    assert "CANCELLED" in str(cancelled.get(timeout=30))
    assert all(error is None for _, error in collect(done, 3))
    deadline, dropped = time.monotonic() + 10, 0.0
    while time.monotonic() < deadline and dropped < 1:
        metrics = served.metrics()
        dropped = metric_value(metrics, "inference_rejections_total", {**SLOW, "reason": "disconnected"})
        time.sleep(0.1)
    assert dropped == 1
    assert metric_value(metrics, "inference_batch_size_sum", SLOW) == 12  # only the 3 busy calls ran


def test_full_queue_is_resource_exhausted_with_retry_after(slow_repository: Path, live_server) -> None:
    served = start(live_server, slow_repository, SERVICE_CPU_THREADS="1")
    x = np.ones((4, 16), np.float32)

    async def burst() -> list[grpc.aio.AioRpcError | None]:
        request = pb.ModelInferRequest(model_name="slow", raw_input_contents=[x.tobytes()])
        request.inputs.add(name="x", datatype="FP32", shape=[4, 16])
        async with grpc.aio.insecure_channel(served.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)

            async def one() -> grpc.aio.AioRpcError | None:
                try:
                    await stub.ModelInfer(request, timeout=120)
                except grpc.aio.AioRpcError as exc:
                    return exc
                return None

            return await asyncio.gather(*(one() for _ in range(24)))

    outcomes = asyncio.run(burst())
    refused = [e for e in outcomes if e is not None]
    assert refused and len(refused) < len(outcomes)
    assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert all(dict(e.trailing_metadata() or ()).get("retry-after", "").isdigit() for e in refused)
    assert metric_value(served.metrics(), "inference_rejections_total", {**SLOW, "reason": "queue_full"}) \
        == len(refused)


def test_sigterm_answers_every_accepted_grpc_call(slow_repository: Path, live_server) -> None:
    served = start(live_server, slow_repository, SERVICE_CPU_THREADS="1")
    done = busy_calls(served.grpc, 4)
    time.sleep(0.3)  # all four accepted and queued or running
    code = served.server.terminate()
    outcomes = collect(done, 4)
    assert [error for _, error in outcomes] == [None] * 4
    assert all(result.as_numpy("y").shape == (4, 4) for result, _ in outcomes)
    assert code in (0, -15)
    log = served.server.log()
    assert "gRPC: draining" in log and "Application shutdown complete" in log
