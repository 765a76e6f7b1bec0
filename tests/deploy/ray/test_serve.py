"""The service on a local two-node Ray cluster: routing, replicas, metrics that add up (deploy/ray)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.ray


def _requests_counted(service, endpoint: str) -> float:
    """inference_request_duration_seconds_count{endpoint} summed over every replica's own /metrics."""
    total = 0.0
    for target in sorted(service.metrics_dir.glob("*.json")):
        entry = json.loads(target.read_text())[0]
        text = httpx.get(f"http://{entry['targets'][0]}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if (sample.name == "inference_request_duration_seconds_count"
                        and sample.labels.get("endpoint") == endpoint):
                    total += sample.value
    return total


def test_traffic_through_two_replicas_and_metrics_add_up(ray_service, forecast_body: dict) -> None:
    body = forecast_body
    before = _requests_counted(ray_service, "/traffic/forecast")
    with httpx.Client(base_url=ray_service.url, timeout=60) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.post("/traffic/forecast", json=body), range(60)))
    assert [a.status_code for a in answers] == [200] * 60, [a.text for a in answers if a.status_code != 200][:3]
    replicas = {a.headers["x-replica"] for a in answers}
    assert len(replicas) == 2 and all(r.startswith("traffic#") for r in replicas), replicas
    targets = [json.loads(p.read_text())[0]["labels"] for p in ray_service.metrics_dir.glob("*.json")]
    assert sorted(t["deployment"] for t in targets) == ["traffic", "traffic", "weld", "weld"], targets
    assert _requests_counted(ray_service, "/traffic/forecast") - before == 60


def test_routes_health_and_oip(ray_service) -> None:
    with httpx.Client(base_url=ray_service.url, timeout=30) as client:
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 200 and ready.json()["deployments"] == {"traffic": True, "weld": True}
        assert client.get("/v2/health/live").json() == {"live": True}
        meta = client.get("/v2/models/weld")
        assert meta.status_code == 200 and meta.headers["x-replica"].startswith("weld#"), meta.text
        assert client.get("/v2/models/traffic/ready").headers["x-replica"].startswith("traffic#")
        missing = client.get("/v2/models/nope")
        assert missing.status_code == 404 and "x-replica" in missing.headers
        stats = client.get("/v2/models/stats").json()["model_stats"]
        assert {row["name"] for row in stats} >= {"traffic", "weld"}
        bad = client.post("/traffic/forecast", content=b"{", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"


def _weld_sample(repository, fill: float) -> dict:
    import numpy as np

    from families.weld.preprocessing import MODALITIES, PreprocessParams

    manifest = json.loads((repository / "weld" / "1" / "manifest.json").read_text())
    shapes = PreprocessParams.from_dict(manifest["preprocessing"]["params"]).shapes()
    return {m: np.full(shapes[m], fill, np.float32).tolist() for m in MODALITIES}


def test_weld_enrolment_through_one_replica_is_seen_by_the_other(ray_service, ray_repository) -> None:
    sample = _weld_sample(ray_repository, 0.37)
    with httpx.Client(base_url=ray_service.url, timeout=60) as client:
        enrolled = client.post("/weld/gallery", json={"samples": [{**sample, "id": "ray-e1", "label": "Spatter"}]},
                               headers={"Authorization": f"Bearer {ray_service.admin_token}"})
        assert enrolled.status_code == 200, enrolled.text
        size, writer = enrolled.json()["gallery_size"], enrolled.headers["x-replica"]
        seen: dict[str, bool] = {}
        for _ in range(60):  # the ingress picks the replica: ask until both have answered
            r = client.post("/weld/classify", json={"samples": [{**sample, "id": "q"}]})
            assert r.status_code == 200, r.text
            result = r.json()
            seen[r.headers["x-replica"]] = (result["gallery_size"] == size
                                            and result["results"][0]["neighbours"][0]["id"] == "ray-e1")
            if len(seen) == 2 and all(seen.values()):
                break
        assert len(seen) == 2 and all(seen.values()), (writer, seen)
        again = client.post("/weld/gallery", json={"samples": [{**sample, "id": "ray-e1", "label": "Spatter"}]},
                            headers={"Authorization": f"Bearer {ray_service.admin_token}"})
        assert again.status_code == 409, again.text  # the id is taken, whichever replica answers
