"""One session-scoped local Ray cluster (a head and a second node on this machine, ray.cluster_utils.Cluster)
serving traffic and weld with two replicas each through deploy/ray/serve_app.py. Skipped without ray."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from benchmarks.harness import ROOT, free_port

# ray.serve, not ray, decides: without ray installed, `import ray` finds this folder (tests/deploy is on
# pythonpath) as an empty namespace package.
serve = pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install -e '.[ray]')")
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from deploy.ray.launch import wait_ready as launcher_wait_ready  # noqa: E402

ADMIN_TOKEN = "ray-test-token"


@dataclass
class RayService:
    url: str
    cluster: Cluster
    worker: object  # the second node
    metrics_dir: Path
    repository: Path
    admin_token: str = ADMIN_TOKEN


def wait_ready(url: str, timeout: float = 240.0) -> None:
    """The app at `url` answers /v2/health/ready 200 (the launcher's wait, with the tests' bound)."""
    launcher_wait_ready(url, timeout)


@pytest.fixture(scope="session")
def extra_app(ray_service):
    """`with extra_app(name, args) as url:` a second application of build_app(args) on the session cluster at
    route prefix /<name>, ready; deleted when the block ends."""
    from deploy.ray.serve_app import build_app

    @contextmanager
    def run(name: str, args: dict) -> Iterator[str]:
        serve.run(build_app(args), name=name, route_prefix=f"/{name}", blocking=False)
        url = f"{ray_service.url}/{name}"
        wait_ready(url)
        try:
            yield url
        finally:
            serve.delete(name)

    return run


@pytest.fixture(scope="session")
def ray_repository(tmp_path_factory: pytest.TempPathFactory, traffic_repository: Path,
                   weld_repository: Path) -> Path:
    repository = tmp_path_factory.mktemp("ray-repo")
    for source in (traffic_repository, weld_repository):
        for model in source.iterdir():
            shutil.copytree(model, repository / model.name)
    return repository


@pytest.fixture(scope="session")
def traffic_repository_with(ray_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """`traffic_repository_with(name, **batching)`: a fresh repository holding the session's traffic model with
    `batching` over its manifests' batching (the manifest is outside its own checksums)."""

    def copy(name: str, **batching: object) -> Path:
        repository = tmp_path_factory.mktemp(f"{name}-repo")
        shutil.copytree(ray_repository / "traffic", repository / "traffic")
        for path in (repository / "traffic").glob("*/manifest.json"):
            manifest = json.loads(path.read_text())
            manifest["batching"].update(batching)
            path.write_text(json.dumps(manifest))
        return repository

    return copy


@pytest.fixture(scope="session")
def ray_service(tmp_path_factory: pytest.TempPathFactory, ray_repository: Path) -> Iterator[RayService]:
    from deploy.ray.serve_app import build_app

    state = tmp_path_factory.mktemp("ray-state")
    # Workers inherit the nodes' environment: the repository root importable, one thread per library.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    port = free_port()
    # The proxy's limits as shipped (request_timeout_s, keep_alive_timeout_s), on a free loopback port.
    shipped = yaml.safe_load((ROOT / "deploy" / "ray" / "serve_config.yaml").read_text())["http_options"]
    serve.start(proxy_location="HeadOnly", http_options={**shipped, "host": "127.0.0.1", "port": port})
    args = {"repository": str(ray_repository), "replicas": 2, "num_cpus": 0.25, "state_dir": str(state),
            "metrics_dir": str(state / "targets"), "graceful_shutdown_timeout_s": 5,
            "settings": {"admin_token": ADMIN_TOKEN, "device": "cpu",
                         "weld_gallery_url": f"sqlite:///{state / 'g.sqlite3'}"}}
    serve.run(build_app(args), name="service", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    try:
        yield RayService(url, cluster, worker, state / "targets", ray_repository)
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="session")
def forecast_body(ray_repository: Path) -> dict:
    """A valid /traffic/forecast request for the repository's traffic model."""
    repository = ray_repository
    import numpy as np

    manifest = json.loads((repository / "traffic" / "1" / "manifest.json").read_text())
    ids = list(manifest["preprocessing"]["sensor_ids"])
    values = np.random.default_rng(0).uniform(20, 70, size=(len(ids), 12)).round(1).tolist()
    stamps = np.datetime64("2012-03-05T08:55:00") + np.arange(-11, 1) * np.timedelta64(5, "m")
    return {"windows": [{"sensor_ids": ids, "values": values, "timestamps": [str(s) for s in stamps]}]}
