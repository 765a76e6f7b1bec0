"""Issue 32 in a real browser (Debian's chromium, no internet): /docs renders every operation and "Try it out"
answers 200, /redoc renders, the landing page lists the models with their states; a failing browser test
keeps a screenshot. The pages' screenshots land in test-artifacts/browser/ (docs/screenshots/ has copies)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.harness import LiveServer, export_tiny

HERE = Path(__file__).resolve().parent
TASK_PREFIXES = ("/traffic/", "/weld/", "/water/", "/image/")
GRAFANA = "http://localhost:3000"  # only linked to: the browser never loads it


@pytest.fixture(scope="session")
def pages_repository(tmp_path_factory: pytest.TempPathFactory, traffic_repository: Path,
                     tiny_checkpoint: Path) -> Path:
    """`traffic` (the task route to try out), `tiny` (the /v2 examples) and `broken` (fails its checksum)."""
    repository = tmp_path_factory.mktemp("pages-repo")
    shutil.copytree(traffic_repository / "traffic", repository / "traffic")
    export_tiny(tiny_checkpoint, repository, "tiny")
    graph = next(export_tiny(tiny_checkpoint, repository, "broken").glob("*.onnx"))
    graph.write_bytes(graph.read_bytes() + b"\0")
    return repository


@pytest.fixture(scope="module")
def server(chromium_executable: Path, serve, pages_repository: Path) -> LiveServer:
    # Not strict: `broken` never loads, the others serve.
    return serve(pages_repository, env={"SERVICE_STRICT_READINESS": "false", "SERVICE_GRAFANA_URL": GRAFANA})


def only_local(page: Any, server: LiveServer) -> None:
    outside = [url for url in page.requested if not url.startswith((server.url, "data:", "blob:"))]
    assert not outside, f"requests that need the internet: {outside}"


def operations(openapi: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in openapi["paths"].items() for method in item}


def test_docs_renders_every_operation_offline(page: Any, server: LiveServer) -> None:
    expected = operations(httpx.get(f"{server.url}/openapi.json", timeout=30).json())
    assert {p for _, p in expected if p.startswith(TASK_PREFIXES)} >= {
        "/traffic/forecast", "/weld/classify", "/water/reconstruct", "/image/compress", "/image/decompress"}
    assert len({p for _, p in expected if p.startswith("/v2")}) >= 10
    page.goto(f"{server.url}/docs")
    page.wait_for_selector(".opblock .opblock-summary-path")
    page.wait_for_function(f"document.querySelectorAll('.opblock').length >= {len(expected)}")
    rendered = page.eval_on_selector_all(".opblock", """blocks => blocks.map(b => [
        b.querySelector('.opblock-summary-method').textContent.trim(),
        b.querySelector('.opblock-summary-path').getAttribute('data-path')])""")
    assert {tuple(r) for r in rendered} == expected
    assert page.title() == "Research model inference service - Swagger UI"
    only_local(page, server)
    assert f"{server.url}/docs/assets/swagger-ui-bundle.js" in page.requested


def test_docs_try_it_out_forecast_answers_200(page: Any, server: LiveServer, artifacts: Path) -> None:
    page.goto(f"{server.url}/docs")
    block = page.locator(".opblock-post", has=page.locator('.opblock-summary-path[data-path="/traffic/forecast"]'))
    block.locator(".opblock-summary").click()
    block.get_by_role("button", name="Try it out").click()
    body = block.locator("textarea.body-param__text")
    assert '"sensor' in body.input_value()  # the served model's example, filled in
    block.get_by_role("button", name="Execute").click()
    status = block.locator(".live-responses-table .response .response-col_status")
    status.wait_for()
    assert status.inner_text().strip() == "200"
    answer = block.locator(".live-responses-table .response-col_description pre").first.inner_text()
    assert '"model": "traffic"' in answer and "forecast" in answer
    # The operation from its title to the answer (the page around it is the other operations).
    clip = page.evaluate("""() => {
        const top = document.querySelector('.opblock.is-open .opblock-summary').getBoundingClientRect();
        const end = document.querySelector('.opblock.is-open .live-responses-table').getBoundingClientRect();
        return {x: 0, y: top.top + window.scrollY - 8, width: document.documentElement.clientWidth,
                height: end.bottom - top.top + 16};
    }""")
    page.screenshot(path=str(artifacts / "docs-try-it-out.png"), full_page=True, clip=clip)
    only_local(page, server)


def test_redoc_renders_offline(page: Any, server: LiveServer) -> None:
    page.goto(f"{server.url}/redoc")
    page.get_by_text("/traffic/forecast").first.wait_for()
    assert page.locator("[data-section-id]").count() > 20  # one per operation (and tag)
    only_local(page, server)
    assert f"{server.url}/redoc/redoc.standalone.js" in page.requested


def test_landing_lists_models_with_states(page: Any, server: LiveServer, artifacts: Path) -> None:
    page.goto(f"{server.url}/")
    assert page.locator("h1").inner_text() == "Research model inference service"
    states = dict(page.eval_on_selector_all("tr[data-model]", """rows => rows.map(r =>
        [r.dataset.model, r.dataset.state])"""))
    assert states == {"broken": "failed", "tiny": "ready", "traffic": "ready"}
    broken = page.locator('tr[data-model="broken"]').inner_text()
    assert "does not match its SHA-256" in broken
    traffic = page.locator('tr[data-model="traffic"]').inner_text()
    assert "v1 (default)" in traffic and "cpu" in traffic and "onnxruntime:CPUExecutionProvider" in traffic
    dashboards = page.locator("ul a").evaluate_all("links => links.map(a => a.href)")
    assert f"{GRAFANA}/d/serving-overview" in dashboards and f"{GRAFANA}/d/rollout" in dashboards \
        and len(dashboards) == 5  # the provisioned dashboards (service/http/landing.py GRAFANA_DASHBOARDS)
    page.get_by_role("link", name="API docs (Swagger UI)").click()
    page.wait_for_url(f"{server.url}/docs")
    page.go_back()
    page.screenshot(path=str(artifacts / "landing.png"), full_page=True)
    only_local(page, server)


FAILING_TEST = '''
def test_deliberately_fails(page):
    page.set_content("<h1>this page is kept</h1>")
    assert page.inner_text("h1") == "something else"


def test_passes(page):
    page.set_content("<h1>no screenshot</h1>")
'''


def test_a_failing_browser_test_keeps_a_screenshot(chromium_executable: Path, tmp_path: Path) -> None:
    """This folder's conftest in a pytest run of its own, with one failing and one passing browser test."""
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_shots.py").write_text(textwrap.dedent(FAILING_TEST))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_shots.py"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "1 failed, 1 passed" in result.stdout, result.stdout[-3000:]
    shots = sorted(p.name for p in (tmp_path / "test-artifacts" / "browser").iterdir())
    assert shots == ["FAILED-test_deliberately_fails.png"]
    assert (tmp_path / "test-artifacts" / "browser" / shots[0]).read_bytes().startswith(b"\x89PNG")
