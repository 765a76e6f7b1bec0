"""Static checks of deploy/kserve/: the ServingRuntime and the InferenceService validate against KServe's CRD
schemas (vendored excerpts in kserve_crds/, Apache-2.0), use no field the CRD does not declare (the API server
would prune it silently), and agree with the image: its port, health paths, metrics path, user, model and
state folders, and an image name that docker/ builds. (No Kubernetes cluster here.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.fixtures.deploy_support import DOCKER, ROOT, env_of, load_yaml, parse_dockerfile

KSERVE = ROOT / "deploy" / "kserve"
CRDS = Path(__file__).resolve().parent / "kserve_crds"
RUNTIME = KSERVE / "servingruntime.yaml"
ISVC = KSERVE / "inferenceservice.yaml"
FAMILIES = {p.name for p in (ROOT / "families").iterdir() if (p / "contract.py").is_file()}


def _schema(name: str) -> dict:
    return load_yaml(CRDS / f"{name}.schema.yaml")


def _undeclared(value: Any, schema: dict, path: str = "") -> list[str]:
    """Fields of `value` that `schema` does not declare (structural-schema pruning, as the API server does)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                found += _undeclared(item, props[key], f"{path}/{key}")
            elif isinstance(extra, dict):
                found += _undeclared(item, extra, f"{path}/{key}")
            elif props is not None:
                found.append(f"{path}/{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for n, item in enumerate(value):
            found += _undeclared(item, schema["items"], f"{path}/{n}")
    return found


@pytest.fixture(scope="module")
def runtime() -> dict:
    return load_yaml(RUNTIME)


@pytest.fixture(scope="module")
def isvc() -> dict:
    return load_yaml(ISVC)


@pytest.mark.parametrize(("manifest", "schema"), [(RUNTIME, "servingruntime"), (ISVC, "inferenceservice")])
def test_manifest_validates_against_the_kserve_crd(manifest: Path, schema: str) -> None:
    crd = _schema(schema)
    document = load_yaml(manifest)
    assert document["apiVersion"] == f"{crd['group']}/{crd['version']}" and document["kind"] == crd["names"]["kind"]
    validator = jsonschema.Draft7Validator(crd["openAPIV3Schema"])  # OpenAPI v3 schemas are close to draft 7
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
    assert not errors, errors
    assert not _undeclared(document, crd["openAPIV3Schema"]), "fields the CRD would prune"


def test_the_validation_catches_a_broken_manifest(runtime: dict) -> None:
    broken = {**runtime, "spec": {k: v for k, v in runtime["spec"].items() if k != "containers"}}
    validator = jsonschema.Draft7Validator(_schema("servingruntime")["openAPIV3Schema"])
    assert any("containers" in e.message for e in validator.iter_errors(broken))
    typo = {**runtime, "spec": {**runtime["spec"], "protocolVersion": ["v2"]}}
    assert _undeclared(typo, _schema("servingruntime")["openAPIV3Schema"]) == ["/spec/protocolVersion"]


def test_runtime_speaks_v2_and_probes_the_service(runtime: dict) -> None:
    spec = runtime["spec"]
    assert spec["protocolVersions"] == ["v2"]
    (container,) = spec["containers"]
    image_env = env_of(parse_dockerfile(DOCKER / "Dockerfile.cpu"))
    port = int(image_env["PORT"])
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PORT"] == str(port) and env["SERVICE_MODEL_REPOSITORY"] == "/mnt/models"  # KServe's storage path
    assert env["SERVICE_STATE_DIR"] in {m["mountPath"] for m in container["volumeMounts"]}
    assert "SERVICE_WELD_GALLERY_URL" in env  # replicas share the weld gallery only through PostgreSQL
    assert container["securityContext"]["runAsUser"] == 10001  # the image's `app` user
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_runtime_annotations_let_prometheus_scrape_every_replica(runtime: dict) -> None:
    annotations = runtime["spec"]["annotations"]
    port = runtime["spec"]["containers"][0]["ports"][0]["containerPort"]
    scrape = load_yaml(DOCKER / "prometheus" / "prometheus.yml")["scrape_configs"]
    metrics_paths = {job.get("metrics_path", "/metrics") for job in scrape}
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
                           "prometheus.io/path": "/metrics"}
    assert annotations["prometheus.io/path"] in metrics_paths


def test_runtime_image_is_built_by_docker(runtime: dict) -> None:
    image = runtime["spec"]["containers"][0]["image"]
    built = {}
    for compose in DOCKER.glob("docker-compose*.yml"):
        for service in (load_yaml(compose).get("services") or {}).values():
            if isinstance(service, dict) and "image" in service and "build" in service:
                built[service["image"]] = service["build"].get("dockerfile")
    assert image in built, f"{image} is not an image docker/ builds ({sorted(built)})"
    assert (ROOT / built[image]).is_file()


def test_runtime_formats_are_our_families_and_the_isvc_uses_one(runtime: dict, isvc: dict) -> None:
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert formats == FAMILIES
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] == "v2" and model["storageUri"]
    assert {e["name"]: e["value"] for e in model["env"]}["SERVICE_MODELS"] == model["modelFormat"]["name"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
