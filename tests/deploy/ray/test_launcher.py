"""`make serve-ray` / `make stop-ray` as a user runs them on a fresh machine (HOME an empty folder, so no
~/.ray/auth_token): the launcher starts its own Ray head with token authentication, two traffic replicas answer
60 forecasts, an oversized body gets 413 through Ray, and `down` stops Serve and the head.

The launcher is run as `make serve-ray` runs it (`python -m deploy.ray.launch up ...`), without the Makefile's
pip install and `make models` steps, on a repository holding the test traffic model only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from benchmarks.harness import ROOT, free_port

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install -e '.[ray]')")
from deploy.ray import launch  # noqa: E402
from scripts.ray_smoke import oversized  # noqa: E402

pytestmark = pytest.mark.ray


def test_auth_token_is_created_private_once_and_passed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    env = launch._env(tmp_path)
    token = tmp_path / launch.AUTH_TOKEN
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(token)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    value = token.read_text()
    assert len(value) == 64 and int(value, 16) >= 0  # 256 random bits, hex, as `ray get-auth-token --generate`
    assert launch._env(tmp_path)["RAY_AUTH_TOKEN_PATH"] == str(token) and token.read_text() == value  # kept
    # A token the user gives is used as is; joining a cluster (RAY_ADDRESS) creates nothing.
    monkeypatch.setenv("RAY_AUTH_TOKEN", "given")
    assert "RAY_AUTH_TOKEN_PATH" not in launch._env(tmp_path / "other")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert "RAY_AUTH_TOKEN_PATH" not in launch._env(tmp_path / "joined")
    assert not (tmp_path / "other").exists() and not (tmp_path / "joined").exists()


def _launcher(args: list[str], home: Path, state: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # a fresh shell: no Ray settings
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "deploy.ray.launch", "--state", str(state), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_serve_ray_up_and_down_on_a_fresh_home(tmp_path: Path, ray_repository: Path, forecast_body: dict) -> None:
    home, state, repository = tmp_path / "home", tmp_path / "state", tmp_path / "repository"
    home.mkdir()
    shutil.copytree(ray_repository / "traffic", repository / "traffic")
    port, ray_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    up = _launcher(["up", "--repository", str(repository), "--replicas", "2", "--host", "127.0.0.1", "--port",
                    str(port), "--ray-port", str(ray_port), "--num-cpus", "2", "--timeout", "300"], home, state, 420)
    head = json.loads((state / "head.json").read_text()) if (state / "head.json").exists() else None
    try:
        print(f"\n{up.stdout.strip().splitlines()[-1] if up.stdout.strip() else up.stderr[-2000:]}")
        assert up.returncode == 0, (up.stdout[-2000:], up.stderr[-3000:],
                                    (state / "ray-head.log").read_text()[-3000:] if head else "")
        assert not (home / ".ray").exists()  # the token lives in the project's state, not in HOME
        assert stat.S_IMODE((state / launch.AUTH_TOKEN).stat().st_mode) == 0o600
        with httpx.Client(base_url=url, timeout=60) as client:
            answers = [client.post("/traffic/forecast", json=forecast_body) for _ in range(60)]
        assert [a.status_code for a in answers] == [200] * 60, [a.text for a in answers if a.status_code != 200][:3]
        replicas = Counter(a.headers["x-replica"] for a in answers)
        print(f"60 forecasts answered by {dict(replicas)}")
        assert len(replicas) == 2 and all(r.startswith("traffic#") for r in replicas), replicas
        too_large = oversized(url, 64 * 1024 * 1024)  # the service's default SERVICE_MAX_REQUEST_BYTES
        print(f"oversized bodies: {too_large}")
        assert too_large == {"declared": 413, "chunked": 413}, too_large
    finally:
        stopping = time.monotonic()
        down = _launcher(["down"], home, state, 180)
        print(f"{down.stdout.strip()}\ndown took {time.monotonic() - stopping:.1f} s")
    assert down.returncode == 0, (down.stdout[-2000:], down.stderr[-3000:])
    assert head is not None and not launch.group_alive(int(head["pgid"])), head
    assert not (state / "head.json").exists() and not (state / "serve.json").exists()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/v2/health/live", timeout=5)


@pytest.fixture(autouse=True)
def _no_orphan_head(tmp_path: Path):
    """A failed `down` must not leave a Ray head running on the machine."""
    yield
    head = tmp_path / "state" / "head.json"
    if head.exists():
        pgid = int(json.loads(head.read_text())["pgid"])
        if launch.group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
