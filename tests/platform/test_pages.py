"""Issue 32, without a browser: /docs and /redoc reference only the service's own assets (which it serves), the
CDN opt-in, and the landing page's content negotiation and model states (tests/browser renders them)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import pytest

from benchmarks.harness import export_tiny
from service.http.landing import GRAFANA_DASHBOARDS, QUEUED, model_entries, wants_json
from service.metrics import Metrics
from service.models.hub import ModelHub
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"""(?:src|href)=["']([^"']+)["']|\burl:\s*'([^']+)'""")


def broken_copy(checkpoint: Path, repository: Path, name: str = "broken") -> None:
    """A version whose graph no longer matches its manifest's checksum: it fails to load, with the reason."""
    graph = next(export_tiny(checkpoint, repository, name).glob("*.onnx"))
    graph.write_bytes(graph.read_bytes() + b"\0")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    repository = tmp_path_factory.mktemp("pages-repo")
    export_tiny(tiny_checkpoint, repository, "tiny")
    broken_copy(tiny_checkpoint, repository)
    return repository


@pytest.fixture(scope="module")
def service(asgi_service, repository: Path):
    return asgi_service(repository, strict_readiness=False)  # `broken` never loads


@pytest.mark.parametrize(("accept", "expected"), [
    ("", False), ("*/*", False), ("text/html", False), ("application/json", True),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),  # a browser
    ("application/json, text/plain, */*", True),  # axios and Swagger UI's fetch
    ("text/html;q=0.5, application/json;q=0.9", True), ("application/json;q=0.2, text/html", False),
    ("application/*", True), ("text/*;q=0.3, */*;q=0.1", False), ("application/json;q=0", False),
    ("application/json;q=oops", False),
])
def test_landing_negotiates_json_only_when_preferred(accept: str, expected: bool) -> None:
    assert wants_json(accept) is expected


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/"])
def test_pages_reference_only_assets_the_service_serves(service, page: str) -> None:
    response = service.get(page, headers={"accept": "text/html"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    references = [a or b for a, b in REFERENCE.findall(response.text)]
    assert references, response.text
    assert not re.search(r"https?://", response.text), "an external URL in the page"
    for url in references:
        asset = service.get(url)
        assert asset.status_code == 200, url
        if url.endswith(".js"):
            assert asset.headers["content-type"].startswith("text/javascript") and len(asset.content) > 500_000
        elif url.endswith(".css"):
            assert asset.headers["content-type"].startswith("text/css")


def test_docs_assets_ship_their_licences(service) -> None:
    # Redoc's bundle was patched by the package to load its logo beside the page, not from its CDN.
    assert service.get("/redoc/logo-mini.svg").headers["content-type"] == "image/svg+xml"
    assert "Apache License" in service.get("/docs/assets/LICENSE").text  # swagger-ui-dist 5.33.1
    assert 'Version: "2.5.4"' in service.get("/redoc/redoc.standalone.js.LICENSE.txt").text
    assert service.get("/favicon.png").content.startswith(b"\x89PNG")


def test_docs_cdn_setting_and_grafana_links(asgi_service, tmp_path_factory: pytest.TempPathFactory) -> None:
    service = asgi_service(tmp_path_factory.mktemp("empty-repo"), docs_cdn=True,
                           grafana_url="http://grafana.example:3000/")
    docs = service.get("/docs").text
    assert "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js" in docs
    assert "/docs/assets/" not in docs
    assert "https://cdn.jsdelivr.net/npm/redoc@2/bundles/redoc.standalone.js" in service.get("/redoc").text
    page = service.get("/", headers={"accept": "application/json"}).json()
    assert page["models"] == [] and page["service"]["ready"] is True
    assert [d["url"] for d in page["links"]["grafana"]] == [
        f"http://grafana.example:3000/d/{uid}" for uid, _ in GRAFANA_DASHBOARDS]
    html = service.get("/").text
    assert 'href="http://grafana.example:3000/d/serving-overview"' in html and "No model in the repository" in html


def test_grafana_links_name_the_provisioned_dashboards() -> None:
    shipped = set()
    for path in (ROOT / "docker" / "grafana" / "dashboards").glob("*.json"):
        dashboard = json.loads(path.read_text())
        shipped.add((dashboard["uid"], dashboard["title"]))
    assert set(GRAFANA_DASHBOARDS) == shipped


def test_landing_lists_models_with_states_from_memory(asgi_service, repository: Path, tmp_path: Path) -> None:
    own = tmp_path / "repo"
    shutil.copytree(repository, own)
    service = asgi_service(own, strict_readiness=False)
    response = service.get("/", headers={"accept": "application/json"})
    assert response.status_code == 200 and response.headers["vary"] == "Accept"
    page = response.json()
    assert page["service"]["name"] == "Research model inference service" and page["service"]["version"]
    assert page["service"]["ready"] is True and page["service"]["device"] == "cpu"
    models = {m["name"]: m for m in page["models"]}
    assert sorted(models) == ["broken", "tiny"]
    tiny, broken = models["tiny"], models["broken"]
    assert (tiny["state"], tiny["version"], tiny["device"], tiny["family"]) == ("ready", 1, "cpu", "tiny")
    assert tiny["runtime"] == "onnxruntime:CPUExecutionProvider"
    assert tiny["versions"] == [{"version": 1, "state": "ready", "reason": "", "default": True, "device": "cpu",
                                 "runtime": "onnxruntime:CPUExecutionProvider"}]
    assert broken["state"] == "failed" and broken["version"] is None
    assert "does not match its SHA-256" in broken["reason"] and str(own) not in broken["reason"]
    assert broken["versions"][0]["state"] == "failed"
    html = service.get("/", headers={"accept": "text/html,*/*;q=0.8"})
    assert html.headers["content-type"].startswith("text/html")
    assert 'data-model="broken" data-state="failed"' in html.text and "does not match its SHA-256" in html.text
    assert 'data-model="tiny" data-state="ready"' in html.text and 'http-equiv="refresh"' not in html.text
    assert service.request("HEAD", "/").status_code == 200
    # No disk read per request: with the repository gone, the page is the same.
    own.rename(tmp_path / "moved")
    assert service.get("/", headers={"accept": "application/json"}).json() == page


def test_landing_states_through_a_models_life(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """queued, loading, ready, fallback, a version kept alongside (not the default), unloaded: the hub's real
    states as the page reads them."""
    from export.core import publish
    from export.families.tiny import plan_from_checkpoint
    from families.manifest import VersionPolicy

    repository = tmp_path / "repo"
    export_tiny(tiny_checkpoint, repository, "other", version=1)
    broken_copy(tiny_checkpoint, repository, "other")  # v2, broken: v1 serves as the fallback
    plan = plan_from_checkpoint(tiny_checkpoint)
    publish(plan, repository, "tiny", 1)
    plan.version_policy = VersionPolicy(kind="latest", num_versions=2)
    publish(plan, repository, "tiny", 2)
    settings = Settings(model_repository=repository, state_dir=tmp_path / "state", device="cpu", cpu_threads=1)

    def by_name(hub: ModelHub) -> dict[str, dict]:
        return {m["name"]: m for m in model_entries(hub)}

    import threading

    from service.plugin import FamilyPlugin

    class HeldLoads(FamilyPlugin):
        """A real plug-in whose `prepare` waits for the test: each load stays in "loading" until released (a
        poll of a load that takes milliseconds could miss it while the loading thread holds the GIL)."""

        name = "tiny"

        def __init__(self) -> None:
            self.release = {"other": threading.Event(), "tiny": threading.Event()}

        def prepare(self, version):  # noqa: ANN001, ANN201 - the base class's signature
            self.release[version.name].wait(60)

    plugin = HeldLoads()

    async def scenario() -> None:
        hub = ModelHub(settings, Metrics(), {"tiny": plugin}, "cpu")
        assert model_entries(hub) == []
        starting = asyncio.get_running_loop().create_task(hub.start())
        seen: set[tuple[str, str, str]] = set()

        async def watch_until(states: set[tuple[str, str, str]]) -> None:
            for _ in range(3000):
                seen.update((m["name"], m["state"], m["reason"]) for m in model_entries(hub))
                if states <= seen:
                    return
                await asyncio.sleep(0.01)

        # Models load one after another: `tiny` waits (queued) while `other` loads.
        await watch_until({("tiny", "loading", QUEUED), ("other", "loading", "")})
        plugin.release["other"].set()
        await watch_until({("tiny", "loading", "")})
        plugin.release["tiny"].set()
        await starting
        assert ("tiny", "loading", QUEUED) in seen and ("other", "loading", "") in seen
        assert ("tiny", "loading", "") in seen

        other = by_name(hub)["other"]
        assert other["state"] == "ready" and other["version"] == 1
        assert other["reason"].startswith("serving version 1 because newer versions failed to load")
        assert [(v["version"], v["state"], v["default"]) for v in other["versions"]] == [
            (2, "failed", False), (1, "ready", True)]
        assert "does not match its SHA-256" in other["versions"][0]["reason"]

        await hub.acquire("tiny", 1)  # kept alongside the served v2 by the version policy
        tiny = by_name(hub)["tiny"]
        assert (tiny["state"], tiny["version"], tiny["device"]) == ("ready", 2, "cpu")
        assert [(v["version"], v["state"], v["default"], v["device"]) for v in tiny["versions"]] == [
            (2, "ready", True, "cpu"), (1, "ready", False, "cpu")]

        await hub.unload("tiny")
        for _ in range(500):
            if by_name(hub)["tiny"]["state"] == "unloaded":
                break
            await asyncio.sleep(0.01)
        assert by_name(hub)["tiny"]["state"] == "unloaded"
        assert {v["state"] for v in by_name(hub)["tiny"]["versions"]} == {"unloaded"}
        await hub.shutdown()

    asyncio.run(scenario())
