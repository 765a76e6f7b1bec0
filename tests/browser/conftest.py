"""Browser fixtures: Debian's chromium (/usr/bin/chromium, installed by scripts/install_chromium.sh) driven by
Playwright, never a downloaded browser; skipped with the reason where either is missing.

The browser has no internet: every host name but 127.0.0.1 fails to resolve (--host-resolver-rules), and each
`page` records the URLs it requested (`page.requested`), so a test can show that a page needs nothing else.
A test that fails leaves a screenshot of its page under `<rootdir>/test-artifacts/browser/` (git-ignored).
Self-contained (pytest and playwright only): tests/browser/test_pages.py runs a copy of it in a sub-process.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               # No internet, as on the machines issue 32 was found on: only the service's address resolves.
               "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
VIEWPORT = {"width": 1280, "height": 860}
TIMEOUT_MS = 60_000  # two shared cores: Swagger UI renders ~40 operations in a few seconds, more under load
REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report  # the `page` fixture reads it at teardown
    return report


@pytest.fixture(scope="session")
def artifacts(pytestconfig: pytest.Config) -> Path:
    """`<rootdir>/test-artifacts/browser/`: failure screenshots and the pages' screenshots for the docs."""
    folder = pytestconfig.rootpath / "test-artifacts" / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def chromium_executable() -> Path:
    """Session-scoped, so that it is checked (and skips) before any module's server is started."""
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed ({CHROMIUM}); scripts/install_chromium.sh installs it")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is not installed (the dev extra of pyproject.toml)")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium_executable: Path) -> Iterator[Any]:
    """One chromium per test module (Playwright's sync API runs its own event loop: stopped after the module)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(chromium_executable), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, artifacts: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh page; `page.requested` lists every URL it asked for. Screenshot kept if the test fails."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    tab.requested = []
    tab.on("request", lambda r: tab.requested.append(r.url))
    try:
        yield tab
    finally:
        reports = request.node.stash.get(REPORTS, {})
        if any(r.failed for r in reports.values()):
            name = re.sub(r"[^\w.-]+", "_", request.node.name)
            try:
                tab.screenshot(path=str(artifacts / f"FAILED-{name}.png"), full_page=True)
            except Exception as exc:  # noqa: BLE001 - a page that cannot be shot must not hide the failure
                print(f"no failure screenshot for {request.node.nodeid}: {exc}")
        context.close()
