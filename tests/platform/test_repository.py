"""Repository integrity and runtime robustness: every file checksummed, fallback to the newest version that
loads, version folders that are not ASCII numbers, no filesystem paths in error bodies, input the runtime
rejects (400, and only for the bad request of a batch), Triton's statistics extension, version policies."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch
import tritonclient.http as triton
from onnx import numpy_helper
from prometheus_client import generate_latest

from benchmarks.harness import LiveServer, export_tiny, metric_value
from export.core import ExportPlan, GraphExport, publish
from families.manifest import ChecksumError, Manifest, VersionPolicy, sha256_file, verify_files
from service.errors import NotFound, NotReady
from service.metrics import Metrics
from service.models.hub import ModelHub
from service.runtimes import open_runtime
from service.settings import Settings
from tests.fixtures.hostile import hostile_request

TOKEN = "repo-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REPORT: list[tuple[str, int, float, float, float]] = []


class Lookup(torch.nn.Module):
    """Embedding of 3 ids per row: an id outside the table is a value the runtime refuses (Gather)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Embedding(10, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids).sum(dim=1)


class Smooth(torch.nn.Module):
    """3x3 convolution without padding over any image size: below 3x3 the runtime refuses the shape."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 2, 3)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.conv(image)


def publish_lookup(repository: Path) -> Path:
    samples = [{"ids": torch.randint(0, 10, (batch, 3), generator=torch.Generator().manual_seed(batch))}
               for batch in (2, 5)]
    plan = ExportPlan(family="tiny", task="lookup",
                      graphs=[GraphExport(name="model", module=Lookup(), samples=samples, output_names=["y"])])
    # A long fixed queue delay so that concurrent requests are batched together (the adaptive policy would
    # send the first of a burst alone when the arrival rate before it was low).
    plan.batching = plan.batching.model_copy(update={"max_queue_delay_ms": 300.0, "delay_policy": "fixed"})
    return publish(plan, repository, "lookup")


def publish_smooth(repository: Path, name: str, format: str) -> Path:
    samples = [{"image": torch.randn(batch, 1, 8, 8)} for batch in (2, 3)]
    axes = {"image": {2: "h", 3: "w"}, "out": {2: "h2", 3: "w2"}}
    graph = GraphExport(name="model", module=Smooth(), samples=samples, output_names=["out"],
                        format=format, dynamic_axes=axes)  # type: ignore[arg-type]
    return publish(ExportPlan(family="tiny", task="smooth", graphs=[graph]), repository, name)


def flip_signs(onnx_path: Path) -> None:
    """Negate the first weight tensor: the graph stays valid ONNX and runs, it just answers wrongly."""
    model = onnx.load(str(onnx_path))
    first = model.graph.initializer[0]
    first.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(first), first.name))
    onnx.save(model, str(onnx_path))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    repo = tmp_path_factory.mktemp("repository-robustness")
    export_tiny(tiny_checkpoint, repo, "tiny", version=1)
    flip_signs(export_tiny(tiny_checkpoint, repo, "tiny", version=2) / "model.onnx")
    # Folders that are not version numbers, with a manifest: "¹".isdigit() is True but int("¹") fails.
    for odd in ("¹", "01"):
        shutil.copytree(repo / "tiny" / "1", repo / "tiny" / odd)
    publish_lookup(repo)
    publish_smooth(repo, "smooth", "onnx")
    publish_smooth(repo, "smooth_ts", "torchscript")
    broken = export_tiny(tiny_checkpoint, repo, "broken")
    (broken / "model.onnx").unlink()
    return repo


@pytest.fixture(scope="module")
def server(repository: Path, serve) -> Iterator[LiveServer]:
    # `broken` is on disk but not loaded at start (strict readiness stays meaningful for the others).
    yield serve(repository, env={"SERVICE_ADMIN_TOKEN": TOKEN, "SERVICE_MODELS": "tiny,lookup,smooth,smooth_ts"})
    for row in REPORT:
        name, status, seconds, lag_s, rss_mb = row
        print(f"hostile case {name:40s} status {status}  {seconds:.3f} s  loop lag {lag_s * 1000:.0f} ms  "
              f"RSS +{rss_mb:.0f} MB")


def oip_body(name: str, array: np.ndarray, datatype: str) -> dict:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": list(array.shape),
                        "data": array.ravel().tolist()}]}


def assert_no_path(text: str, repository: Path) -> None:
    assert str(repository) not in text and not re.search(r"(?<![\w.:])/(tmp|home|work|usr|srv)/", text), text


# ---- item 14: every file of a version is checksummed --------------------------------------------------
def test_every_file_has_a_checksum_and_a_sign_flipped_graph_fails_verification(repository: Path) -> None:
    good, flipped = repository / "tiny" / "1", repository / "tiny" / "2"
    manifest = Manifest.read(good)
    assert manifest.schema_version == 2
    assert manifest.files == {name: sha256_file(good / name) for name in ("model.onnx", "model.torchscript.pt")}
    verify_files(good, manifest)
    # The tampered graph is still a valid model that serves (wrong) answers: only the checksum catches it.
    onnx.checker.check_model(onnx.load(str(flipped / "model.onnx")), full_check=True)
    x = np.ones((1, 16), dtype=np.float32)
    graph = manifest.primary
    assert not np.allclose(open_runtime(good, graph, "cpu").run({"x": x})["y"],
                           open_runtime(flipped, graph, "cpu").run({"x": x})["y"])
    with pytest.raises(ChecksumError, match="model.onnx"):
        verify_files(flipped, Manifest.read(flipped))
    (good / "extra.bin").write_bytes(b"not in the manifest")
    try:
        with pytest.raises(ChecksumError, match="extra.bin"):
            verify_files(good, manifest)
    finally:
        (good / "extra.bin").unlink()


def test_manifest_without_a_graph_checksum_is_refused(repository: Path) -> None:
    data = Manifest.read(repository / "tiny" / "1").model_dump()
    data["files"] = {}
    with pytest.raises(ValueError, match="no checksum"):
        Manifest.model_validate(data)


# ---- item 15: fall back to the newest version that loads ----------------------------------------------
def test_latest_version_failing_at_start_up_falls_back_and_says_so(server: LiveServer, repository: Path) -> None:
    url = server.url
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    meta = httpx.get(f"{url}/v2/models/tiny").json()
    assert meta["versions"] == ["1"]
    fallback = meta["parameters"]["fallback"]
    assert "serving version 1" in fallback and "version 2" in fallback and "model.onnx" in fallback
    assert_no_path(fallback, repository)
    metrics = httpx.get(f"{url}/metrics").text
    assert metric_value(metrics, "model_load_failures_total", {"model": "tiny", "version": "2"}) == 1
    assert metric_value(metrics, "model_fallback", {"model": "tiny"}) == 1
    assert metric_value(metrics, "model_fallback", {"model": "lookup"}) == 0
    assert re.search(r"ERROR service.models.hub: model tiny: serving version 1", server.log())
    rows = {(r["name"], r["version"]): r for r in httpx.post(f"{url}/v2/repository/index", headers=AUTH).json()}
    assert rows[("tiny", "1")]["state"] == "READY" and rows[("tiny", "2")]["state"] == "UNAVAILABLE"
    assert "SHA-256" in rows[("tiny", "2")]["reason"]


def test_failed_load_bodies_name_no_filesystem_path(server: LiveServer, repository: Path) -> None:
    load = hostile_request(server, lambda c: c.post("/v2/repository/models/broken/load", headers=AUTH),
                           report=REPORT, name="load of a version missing its graph")
    assert load.status_code == 400 and "model.onnx" in load.json()["error"]
    assert_no_path(load.text, repository)
    unloaded = httpx.get(f"{server.url}/v2/models/broken")  # 503 is the right answer: not a hostile_request
    assert unloaded.status_code == 503 and "model.onnx" in unloaded.json()["error"]
    assert_no_path(unloaded.text, repository)
    assert_no_path(httpx.post(f"{server.url}/v2/repository/index", headers=AUTH).text, repository)
    assert str(repository) in server.log()  # the full message, path included, is logged


# ---- item 10: version folders that are not ASCII numbers ---------------------------------------------
@pytest.mark.parametrize(("name", "request_"), [
    ("index with a '¹' version folder", lambda c: c.post("/v2/repository/index", headers=AUTH)),
    ("unknown model with a '¹' folder", lambda c: c.get("/v2/models/nope/ready")),
    ("readiness with a '¹' folder", lambda c: c.get("/v2/health/ready")),
])
def test_version_folders_that_are_not_ascii_numbers_are_skipped(server: LiveServer, name: str, request_) -> None:
    response = hostile_request(server, request_, max_seconds=2, report=REPORT, name=name)
    assert response.status_code in (200, 404), response.text
    if "index" in name:
        assert {r["version"] for r in response.json() if r["name"] == "tiny"} == {"1", "2"}
    assert "skipping folder '¹' of model 'tiny'" in server.log()
    assert "skipping folder '01' of model 'tiny'" in server.log()


# ---- item 9: input the runtime rejects ----------------------------------------------------------------
@pytest.mark.parametrize(("model", "body", "needle"), [
    ("smooth", oip_body("image", np.zeros((1, 1, 1, 1), np.float32), "FP32"), "Invalid input shape"),
    ("smooth_ts", oip_body("image", np.zeros((1, 1, 2, 2), np.float32), "FP32"), "Kernel size"),
    ("lookup", oip_body("ids", np.array([[1, 2, 99]]), "INT64"), "out of data bounds"),
    ("lookup", oip_body("ids", np.array([[-11, 0, 0]]), "INT64"), "out of data bounds"),
])
def test_input_the_runtime_rejects_is_a_400_with_its_message(server: LiveServer, repository: Path, model: str,
                                                            body: dict, needle: str) -> None:
    response = hostile_request(server, lambda c: c.post(f"/v2/models/{model}/infer", json=body),
                               max_seconds=3, report=REPORT, name=f"{model}: {needle}")
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]
    assert_no_path(response.text, repository)  # TorchScript's traceback (source paths) is not passed on


def test_one_bad_request_fails_alone_in_its_batch(server: LiveServer, repository: Path) -> None:
    version_dir = repository / "lookup" / "1"
    reference = open_runtime(version_dir, Manifest.read(version_dir).primary, "cpu")
    good = [np.array([[i, (i + 1) % 10, (i + 2) % 10]]) for i in range(4)]
    bad = np.array([[0, 1, 1000]])

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            # Open the five connections first, so that the burst arrives well inside the queue delay.
            await asyncio.gather(*(client.get("/v2/health/live") for _ in range(5)))
            bodies = [oip_body("ids", ids, "INT64") for ids in [*good[:2], bad, *good[2:]]]
            return await asyncio.gather(*(client.post("/v2/models/lookup/infer", json=b) for b in bodies))

    answers = asyncio.run(burst())
    codes = [a.status_code for a in answers]
    assert codes == [200, 200, 400, 200, 200], [a.text for a in answers]
    for ids, answer in zip(good, [answers[0], answers[1], answers[3], answers[4]], strict=True):
        want = reference.run({"ids": ids})["y"]
        np.testing.assert_allclose(np.array(answer.json()["outputs"][0]["data"]).reshape(want.shape), want,
                                   rtol=1e-5, atol=1e-6)
    assert "running its requests one by one" in server.log()  # they did share one batch
    assert httpx.post(f"{server.url}/v2/models/lookup/infer", json=oip_body("ids", good[0], "INT64")).status_code == 200


# ---- item 17: Triton's statistics extension ----------------------------------------------------------
def test_statistics_extension_with_tritonclient(server: LiveServer) -> None:
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    assert "statistics" in client.get_server_metadata()["extensions"]
    before = client.get_inference_statistics("smooth")["model_stats"][0]
    httpx.post(f"{server.url}/v2/models/lookup/infer", json=oip_body("ids", np.array([[0, 0, 50]]), "INT64"))
    image = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
    for _ in range(3):
        tensor = triton.InferInput("image", list(image.shape), "FP32")
        tensor.set_data_from_numpy(image, binary_data=True)
        client.infer("smooth", [tensor])
    after = client.get_inference_statistics("smooth", "1")["model_stats"][0]
    assert (after["name"], after["version"]) == ("smooth", "1")
    assert after["inference_count"] - before["inference_count"] == 6  # rows
    assert after["execution_count"] - before["execution_count"] == 3
    stats, was = after["inference_stats"], before["inference_stats"]
    for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert stats[phase]["count"] - was[phase]["count"] == 3, phase
    assert stats["success"]["ns"] > was["success"]["ns"] and stats["compute_infer"]["ns"] > 0
    assert stats["success"]["ns"] - was["success"]["ns"] >= stats["compute_infer"]["ns"] - was["compute_infer"]["ns"]
    sizes = {b["batch_size"]: b for b in after["batch_stats"]}
    assert sizes[2]["compute_infer"]["count"] >= 3 and after["last_inference"] > 1_600_000_000_000

    everything = client.get_inference_statistics()["model_stats"]
    assert {(m["name"], m["version"]) for m in everything} == {
        ("tiny", "1"), ("lookup", "1"), ("smooth", "1"), ("smooth_ts", "1")}
    lookup = next(m for m in everything if m["name"] == "lookup")
    assert lookup["inference_stats"]["fail"]["count"] >= 1  # rejected ids count as failures
    with pytest.raises(triton.InferenceServerException):
        client.get_inference_statistics("tiny", "2")  # on disk but not loaded: 404
    for path, status in (("/v2/models/nope/stats", 404), ("/v2/models/tiny/versions/%C2%B2/stats", 400),
                         ("/v2/models/tiny/versions/9/stats", 404)):
        response = hostile_request(server, lambda c, p=path: c.get(p), max_seconds=2, report=REPORT,
                                   name=f"GET {path}")
        assert response.status_code == status, (path, response.text)


# ---- item 18: version policy, versions loaded alongside the served one --------------------------------
def publish_tiny(checkpoint: Path, repository: Path, version: int, policy: VersionPolicy | None = None) -> Path:
    from export.families.tiny import plan_from_checkpoint

    plan = plan_from_checkpoint(checkpoint)
    if policy is not None:
        plan.version_policy = policy
    return publish(plan, repository, "tiny", version)


def make_hub(repository: Path, tmp_path: Path) -> ModelHub:
    settings = Settings(model_repository=repository, state_dir=tmp_path / "state", device="cpu", cpu_threads=1)
    return ModelHub(settings, Metrics(), {}, "cpu")


async def drained(hub: ModelHub, version: int) -> bool:
    for _ in range(500):
        if any(r["version"] == str(version) and r["reason"] == "unloaded" for r in hub.index()):
            return True
        await asyncio.sleep(0.01)
    return False


def test_acquire_loads_kept_versions_alongside_and_drains_them(tiny_checkpoint: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    keep_two = VersionPolicy(kind="latest", num_versions=2)
    publish_tiny(tiny_checkpoint, repository, 1)
    publish_tiny(tiny_checkpoint, repository, 2, keep_two)
    assert Manifest.read(repository / "tiny" / "2").version_policy == keep_two

    async def scenario() -> None:
        hub = make_hub(repository, tmp_path)
        await hub.start()
        assert sorted(hub.manifests("tiny")) == [1, 2] and hub.manifests("nope") == {}
        assert hub.get("tiny").version == 2 and hub.fallback("tiny") is None
        first, second = await asyncio.gather(hub.acquire("tiny", 1), hub.acquire("tiny", 1))
        assert first is second and first.version == 1  # one lazy load shared by both callers
        assert hub.get("tiny").version == 2  # still the served version
        assert sorted(v.version for v in hub.serving()) == [1, 2]
        out = await first.infer({"x": np.ones((3, 16), np.float32)})
        assert out["y"].shape == (3, 4)
        assert await hub.acquire("tiny", 2) is hub.get("tiny")
        with pytest.raises(NotFound, match="no version 7"):
            await hub.acquire("tiny", 7)

        # v3 keeps the latest two: v2 (served until now) stays loaded without a reload, v1 is drained.
        publish_tiny(tiny_checkpoint, repository, 3, keep_two)
        served_v2 = hub.get("tiny")
        await hub.load("tiny")
        assert hub.get("tiny").version == 3 and await hub.acquire("tiny", 2) is served_v2
        assert sorted(v.version for v in hub.serving()) == [2, 3]
        with pytest.raises(NotFound, match="version policy"):
            await hub.acquire("tiny", 1)
        assert await drained(hub, 1)

        await hub.unload("tiny")
        with pytest.raises(NotReady):
            await hub.acquire("tiny", 2)
        await hub.shutdown()
        assert all(row["state"] == "UNAVAILABLE" for row in hub.index())

    asyncio.run(scenario())


def test_default_policy_serves_only_the_latest(tiny_checkpoint: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    publish_tiny(tiny_checkpoint, repository, 1)
    publish_tiny(tiny_checkpoint, repository, 2)

    async def scenario() -> None:
        hub = make_hub(repository, tmp_path)
        await hub.start()
        with pytest.raises(NotFound, match="version policy"):
            await hub.acquire("tiny", 1)
        await hub.shutdown()

    asyncio.run(scenario())


def test_a_kept_version_that_fails_to_load_is_not_retried_at_once(tiny_checkpoint: Path, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    flip_signs(publish_tiny(tiny_checkpoint, repository, 1) / "model.onnx")
    publish_tiny(tiny_checkpoint, repository, 2, VersionPolicy(kind="all"))

    async def scenario() -> None:
        hub = make_hub(repository, tmp_path)
        await hub.start()
        for _ in range(3):
            with pytest.raises(NotReady, match="SHA-256"):
                await hub.acquire("tiny", 1)
        failures = metric_value(generate_latest(hub.metrics.registry).decode(), "model_load_failures_total",
                                {"model": "tiny", "version": "1"})
        assert failures == 1  # refused from memory after the first failure, not re-loaded per request
        assert hub.get("tiny").version == 2
        await hub.shutdown()

    asyncio.run(scenario())


def test_policy_kinds() -> None:
    policy = VersionPolicy(kind="specific", versions=[1])
    assert policy.keeps(1, [1, 2, 3]) and not policy.keeps(2, [1, 2, 3]) and policy.keeps(3, [1, 2, 3])
    assert VersionPolicy(kind="all").keeps(1, [1, 5]) and not VersionPolicy(kind="all").keeps(4, [1, 5])
    assert not VersionPolicy().keeps(1, [1, 2]) and VersionPolicy(num_versions=2).keeps(1, [1, 2])
