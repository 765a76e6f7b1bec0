"""Smoke check of a running Ray Serve deployment (after `make serve-ray REPLICAS=2`): readiness, N forecasts and
which replicas answered them (X-Replica), an enrolment through one weld replica and the replicas whose
classify sees it as the nearest neighbour, and 409 on the duplicate id.

    SERVICE_ADMIN_TOKEN=t make serve-ray REPLICAS=2
    python -m deploy.ray.smoke --url http://127.0.0.1:8000 --token t
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from families.weld.preprocessing import MODALITIES, PreprocessParams


def _manifest(repository: Path, model: str) -> dict:
    versions = sorted((p for p in (repository / model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return json.loads((versions[-1] / "manifest.json").read_text())


def forecast_body(repository: Path) -> dict:
    ids = list(_manifest(repository, "traffic")["preprocessing"]["sensor_ids"])
    values = np.random.default_rng(0).uniform(20, 70, size=(len(ids), 12)).round(1).tolist()
    stamps = np.datetime64("2012-03-05T08:55:00") + np.arange(-11, 1) * np.timedelta64(5, "m")
    return {"windows": [{"sensor_ids": ids, "values": values, "timestamps": [str(s) for s in stamps]}]}


def weld_sample(repository: Path, fill: float) -> dict:
    shapes = PreprocessParams.from_dict(_manifest(repository, "weld")["preprocessing"]["params"]).shapes()
    return {m: np.full(shapes[m], fill, np.float32).tolist() for m in MODALITIES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--token", required=True, help="the service's admin token (SERVICE_ADMIN_TOKEN)")
    parser.add_argument("--requests", type=int, default=60)
    args = parser.parse_args(argv)
    auth = {"Authorization": f"Bearer {args.token}"}
    with httpx.Client(base_url=args.url, timeout=60) as client:
        print("ready:", client.get("/v2/health/ready").status_code)
        body, statuses, replicas = forecast_body(args.repository), Counter(), Counter()
        for _ in range(args.requests):
            r = client.post("/traffic/forecast", json=body)
            statuses[r.status_code] += 1
            replicas[r.headers.get("x-replica")] += 1
        print(f"{args.requests} forecasts: statuses {dict(statuses)}, replicas {dict(replicas)}")
        sample, sample_id = weld_sample(args.repository, 0.41), f"smoke-{uuid.uuid4().hex[:8]}"
        enrolment = {"samples": [{**sample, "id": sample_id, "label": "Spatter"}]}
        e = client.post("/weld/gallery", json=enrolment, headers=auth)
        print("enrol:", e.status_code, "by", e.headers.get("x-replica"))
        seen: dict[str, set[str]] = {}
        for _ in range(80):
            r = client.post("/weld/classify", json={"samples": [{**sample, "id": "q"}]})
            top = r.json()["results"][0]["neighbours"][0]["id"] if r.status_code == 200 else str(r.status_code)
            seen.setdefault(r.headers.get("x-replica", "?"), set()).add(top)
        print("nearest neighbour per weld replica:", {k: sorted(v) for k, v in seen.items()})
        again = client.post("/weld/gallery", json=enrolment, headers=auth)
        print("duplicate enrolment:", again.status_code)
    ok = (statuses == Counter({200: args.requests}) and len(replicas) >= 2 and e.status_code == 200
          and all(v == {sample_id} for v in seen.values()) and len(seen) >= 2 and again.status_code == 409)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
