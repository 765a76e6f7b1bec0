"""A retired weld version closes its gallery connections (issue 26 item 11), on a live service process.

The plug-in's `teardown` (service/plugin.py) is called by the repository when it retires a version (unload,
a load that replaces it, shutdown); weld's closes its `GalleryStore`. Several unload/load cycles through the
admin API must leave exactly the served version's two connections: counted by the database server itself for
PostgreSQL (`pg_stat_activity`), and as the process's open file descriptors on the database file for SQLite.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.harness import LiveServer
from families.manifest import Manifest
from families.weld.classes import CLASSES
from families.weld.preprocessing import PreprocessParams
from tests.fixtures.postgres import postgres_server  # noqa: F401 - the session fixture, used by `gallery`

TOKEN = "teardown-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
CYCLES = 3
PER_VERSION = 2  # a gallery holds a writer and a reader connection


@pytest.fixture(params=["sqlite", "postgres"])
def gallery(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Callable[[LiveServer], int]]:
    """(SERVICE_WELD_GALLERY_URL, count(server) -> the gallery connections the server process holds)."""
    if request.param == "sqlite":
        path = tmp_path / "gallery.sqlite3"

        def open_files(server: LiveServer) -> int:
            fds = Path(f"/proc/{server.process.pid}/fd")
            targets = []
            for fd in fds.iterdir():
                try:
                    targets.append(os.readlink(fd))
                except FileNotFoundError:  # closed while listed
                    continue
            return targets.count(str(path))

        return f"sqlite:///{path}", open_files
    import psycopg

    pg = request.getfixturevalue("postgres_server")
    url = pg.new_database()
    database = url.rsplit("/", 1)[1]

    def backends(server: LiveServer) -> int:
        # Asked on the cluster's maintenance database: this connection is not one of those counted.
        with psycopg.connect(pg.url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                               "pg_backend_pid()", (database,)).fetchone()
        return int(row[0])

    return url, backends


def _wait_for(count: Callable[[LiveServer], int], server: LiveServer, want: int, timeout: float = 30.0) -> int:
    """The count once it equals `want` (retirement drains and tears down in the background), else the last."""
    deadline = time.monotonic() + timeout
    while (got := count(server)) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def _enrol(client: httpx.Client, repository: Path, sample_id: str) -> httpx.Response:
    params = PreprocessParams.from_dict(Manifest.read(repository / "weld" / "1").preprocessing["params"])
    sample = {m: np.zeros(s, np.float32).tolist() for m, s in params.shapes().items()}
    body = {"samples": [{**sample, "id": sample_id, "label": CLASSES[0]}]}
    return client.post("/weld/gallery", content=json.dumps(body),
                       headers={"content-type": "application/json", **AUTH})


def test_unload_and_reload_close_the_retired_gallery(live_server, weld_repository: Path, tmp_path: Path,
                                                     gallery: tuple[str, Callable[[LiveServer], int]]) -> None:
    url, count = gallery
    server = live_server(weld_repository, env={"SERVICE_ADMIN_TOKEN": TOKEN, "SERVICE_WELD_GALLERY_URL": url,
                                               "SERVICE_STATE_DIR": str(tmp_path / "state")})
    seen = [count(server)]
    assert seen[0] == PER_VERSION, seen
    with httpx.Client(base_url=server.url, timeout=120) as client:
        assert _enrol(client, weld_repository, "before").status_code == 200
        for cycle in range(CYCLES):
            assert client.post("/v2/repository/models/weld/unload", headers=AUTH).status_code == 200
            seen.append(_wait_for(count, server, 0))
            loaded = client.post("/v2/repository/models/weld/load", headers=AUTH)
            assert loaded.status_code == 200, loaded.text
            seen.append(_wait_for(count, server, PER_VERSION))
            # The new version's gallery works, and holds what the retired one enrolled.
            assert _enrol(client, weld_repository, f"cycle-{cycle}").status_code == 200
            info = client.get("/weld/gallery").json()
            assert info["enrolled"] == cycle + 2, info
        # Loading the served version again keeps it (no rebuild, no new connections).
        assert client.post("/v2/repository/models/weld/load", headers=AUTH).status_code == 200
        seen.append(_wait_for(count, server, PER_VERSION, timeout=1.0))
    print(f"\n{url.split(':')[0]} gallery connections after start, then per unload / load: {seen}")
    assert seen == [PER_VERSION] + [0, PER_VERSION] * CYCLES + [PER_VERSION], seen
    assert "teardown of" not in server.log()  # no teardown failed
