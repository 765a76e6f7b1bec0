"""The weld gallery in PostgreSQL through Ray Serve: a second application ("pg", route_prefix /pg) on the session
cluster, two weld replicas whose environment carries SERVICE_WELD_GALLERY_URL=postgresql://... (a throw-away
cluster, tests/fixtures/postgres.py). An enrolment through one replica is used by classify on the other; a
duplicate id is refused with 409 whichever replica answers; the rows are in the database."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.postgres import postgres_server  # noqa: F401 - the session fixture

pytestmark = pytest.mark.ray
TOKEN = "ray-pg-token"


@pytest.fixture(scope="module")
def pg_app(ray_service, ray_repository: Path, postgres_server, tmp_path_factory: pytest.TempPathFactory,  # noqa: F811
           extra_app) -> Iterator[tuple[str, str]]:
    database = postgres_server.new_database()
    state = tmp_path_factory.mktemp("pg-state")
    args = {"repository": str(ray_repository), "families": ["weld"], "replicas": 2, "ingress_replicas": 1,
            "num_cpus": 0.25, "state_dir": str(state), "metrics_dir": str(state / "targets"),
            "graceful_shutdown_timeout_s": 2, "env": {"SERVICE_WELD_GALLERY_URL": database},
            "settings": {"admin_token": TOKEN, "device": "cpu"}}
    with extra_app("pg", args) as url:
        yield url, database


def _weld_sample(repository: Path, fill: float) -> dict:
    import numpy as np

    from families.weld.preprocessing import MODALITIES, PreprocessParams

    manifest = json.loads((repository / "weld" / "1" / "manifest.json").read_text())
    shapes = PreprocessParams.from_dict(manifest["preprocessing"]["params"]).shapes()
    return {m: np.full(shapes[m], fill, np.float32).tolist() for m in MODALITIES}


def test_enrolment_through_one_replica_is_seen_on_the_other_with_postgresql(pg_app: tuple[str, str],
                                                                             ray_repository: Path) -> None:
    import psycopg

    url, database = pg_app
    sample = _weld_sample(ray_repository, 0.61)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, timeout=60) as client:
        enrolled = client.post("/weld/gallery", json={"samples": [{**sample, "id": "pg-e1", "label": "Spatter"}]},
                               headers=auth)
        acknowledged = time.monotonic()
        assert enrolled.status_code == 200, enrolled.text
        size, writer = enrolled.json()["gallery_size"], enrolled.headers["x-replica"]
        seen: dict[str, bool] = {}
        other_after = None
        for _ in range(80):  # the ingress picks the replica: ask until both have answered with the enrolment
            r = client.post("/weld/classify", json={"samples": [{**sample, "id": "q"}]})
            assert r.status_code == 200, r.text
            result = r.json()
            replica = r.headers["x-replica"]
            seen[replica] = (result["gallery_size"] == size
                             and result["results"][0]["neighbours"][0]["id"] == "pg-e1")
            if replica != writer and other_after is None:
                other_after = time.monotonic() - acknowledged
            if len(seen) == 2 and all(seen.values()):
                break
        print(f"\nPostgreSQL gallery: enrolled through {writer}; classify per replica {seen}; first answer of the "
              f"other replica {other_after * 1000:.0f} ms after the acknowledgement" if other_after else "")
        assert len(seen) == 2 and all(seen.values()), (writer, seen)
        for _ in range(4):  # 409 whichever replica takes the duplicate
            again = client.post("/weld/gallery", json={"samples": [{**sample, "id": "pg-e1", "label": "Spatter"}]},
                                headers=auth)
            assert again.status_code == 409, again.text
    with psycopg.connect(database, connect_timeout=10) as conn:
        rows = conn.execute("SELECT count(*) FROM weld_gallery WHERE sample_id = 'pg-e1'").fetchone()
    assert rows == (1,), rows
