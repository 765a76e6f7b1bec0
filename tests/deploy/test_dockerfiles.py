"""Static checks of the Dockerfiles: every COPY source exists in the build context and is not excluded by
the Dockerfile's own .dockerignore, the user is not root, the health check probes readiness, the GPU image
installs the GPU runtimes and the CPU image the CPU ones, and the dependency installer reads pyproject."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.fixtures.deploy_support import (
    DOCKER,
    ROOT,
    copy_sources,
    dockerignore_excludes,
    env_of,
    load_yaml,
    parse_dockerfile,
)

SERVICE_IMAGES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cpu"]
ALL_IMAGES = [*SERVICE_IMAGES, DOCKER / "Dockerfile.models"]
# Build outputs, not sources: Dockerfile.models bakes the repository that `make serve` builds.
BUILD_OUTPUTS = {"model_repository/"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _arg_defaults(path: Path) -> dict[str, str]:
    return dict(i.args.split("=", 1) for i in parse_dockerfile(path) if i.keyword == "ARG" and "=" in i.args)


# What the service images must contain, and what must stay out of their build context.
IMAGE_SOURCES = ("pyproject.toml", "README.md", "families", "service", "export", "training", "models",
                 "docker/install_deps.py", "docker/healthcheck.py")


def _shipped(path: Path) -> list[Path]:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return [f for f in files if "__pycache__" not in f.parts and f.suffix != ".pyc"]


@pytest.mark.parametrize("dockerfile", ALL_IMAGES, ids=lambda p: p.name)
def test_copy_sources_exist_and_are_in_the_build_context(dockerfile: Path) -> None:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name} keeps .venv, runs and data out of the build context"
    copies = [i for i in parse_dockerfile(dockerfile) if i.keyword == "COPY"]
    assert copies
    for instruction in copies:
        assert "--from" not in instruction.args
        sources, _ = copy_sources(instruction)
        for source in sources:
            if source in BUILD_OUTPUTS:
                continue
            if source == ".":  # the whole (filtered) context: checked by test_build_context_allow_list
                continue
            path = ROOT / source
            assert path.exists(), f"{dockerfile.name}:{instruction.line}: COPY source {source} does not exist"
            shipped = _shipped(path)
            assert shipped, f"{source} is empty"
            for file in shipped:
                relative = file.relative_to(ROOT).as_posix()
                assert not dockerignore_excludes(ignore, relative), f"{relative} is excluded by {ignore.name}"


@pytest.mark.parametrize("dockerfile", SERVICE_IMAGES, ids=lambda p: p.name)
def test_build_context_allow_list(dockerfile: Path) -> None:
    """`COPY . .` ships exactly the service's sources: every file of them, and nothing else at the top
    level of the repository (.venv, runs, model_repository, tests, .git ...)."""
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    for source in ("service", "export", "training", "docker/healthcheck.py", "pyproject.toml", "README.md"):
        assert (ROOT / source).exists(), source
    for source in IMAGE_SOURCES:
        for file in _shipped(ROOT / source) if (ROOT / source).exists() else []:
            relative = file.relative_to(ROOT).as_posix()
            assert not dockerignore_excludes(ignore, relative), f"{relative} is excluded by {ignore.name}"
    top_level = {p.split("/")[0] for p in IMAGE_SOURCES}
    for entry in sorted(ROOT.iterdir()):
        if entry.name not in top_level:
            assert dockerignore_excludes(ignore, f"{entry.name}/any/file"), f"{entry.name} enters the image"
    for stray in (".venv/bin/python", "model_repository/traffic/1/model.onnx", "runs/x/best.pt", "state/g.npz",
                  "tests/conftest.py", ".git/HEAD", "docker/docker-compose.yml",
                  "service/__pycache__/app.cpython-311.pyc", "training/weld/__pycache__/x.pyc"):
        assert dockerignore_excludes(ignore, stray), f"{stray} enters the image"


def test_models_image_bakes_the_default_repository_path() -> None:
    from service.settings import Settings

    instructions = parse_dockerfile(DOCKER / "Dockerfile.models")
    copy = next(i for i in instructions if i.keyword == "COPY")
    sources, destination = copy_sources(copy)
    assert sources == [f"{Settings().model_repository.as_posix()}/"]
    assert destination == "/models/" and "--chown=app:app" in copy.args
    ignore = DOCKER / "Dockerfile.models.dockerignore"
    assert not dockerignore_excludes(ignore, "model_repository/traffic/1/manifest.json")
    assert dockerignore_excludes(ignore, "service/app.py")
    compose_image = load_yaml(DOCKER / "docker-compose.yml")["services"]["inference"]["image"]
    assert _arg_defaults(DOCKER / "Dockerfile.models")["BASE_IMAGE"] == compose_image


@pytest.mark.parametrize("dockerfile", SERVICE_IMAGES, ids=lambda p: p.name)
def test_runtime_contract(dockerfile: Path) -> None:
    instructions = parse_dockerfile(dockerfile)
    keywords = [i.keyword for i in instructions]
    users = [i.args for i in instructions if i.keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the service must not run as root"
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN"), "RUN after USER"
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    assert "useradd --uid 10001 --create-home" in runs
    env = env_of(instructions)
    assert env["SERVICE_MODEL_REPOSITORY"] == "/models"
    assert env["HOST"] == "0.0.0.0"
    assert [i.args for i in instructions if i.keyword == "EXPOSE"] == [env["PORT"]]
    assert [i.args for i in instructions if i.keyword == "CMD"][-1] == '["python", "-m", "service"]'
    assert [i.args for i in instructions if i.keyword == "STOPSIGNAL"] == ["SIGTERM"]
    healthcheck = next(i.args for i in instructions if i.keyword == "HEALTHCHECK")
    assert "/app/docker/healthcheck.py" in healthcheck
    workdir = next(i.args for i in instructions if i.keyword == "WORKDIR")
    copied = {copy_sources(i)[0][0] for i in instructions if i.keyword == "COPY"}
    assert "." in copied and workdir == "/app"  # docker/healthcheck.py -> /app/docker/healthcheck.py
    # Volumes mounted at /models and /state must be writable by the service user.
    assert "chown app:app /models /state" in runs


def test_gpu_image_uses_cuda_builds() -> None:
    args = _arg_defaults(DOCKER / "Dockerfile")
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "-runtime-" in args["CUDA_IMAGE"]
    cuda = args["CUDA_IMAGE"].split(":")[1].split("-")[0]  # e.g. 12.8.1
    assert args["TORCH_INDEX_URL"].endswith("/cu" + "".join(cuda.split(".")[:2]))
    assert args["EXTRAS"].split(",") == ["gpu", "train"]
    assert any(r.startswith("onnxruntime-gpu") for r in PYPROJECT["project"]["optional-dependencies"]["gpu"])
    assert any(r.startswith("nvidia-ml-py") for r in PYPROJECT["project"]["optional-dependencies"]["gpu"])
    assert env_of(parse_dockerfile(DOCKER / "Dockerfile"))["SERVICE_DEVICE"] == "auto"


def test_cpu_image_uses_cpu_builds() -> None:
    args = _arg_defaults(DOCKER / "Dockerfile.cpu")
    assert args["TORCH_INDEX_URL"].endswith("/cpu")
    assert args["EXTRAS"].split(",") == ["cpu", "train"]
    python = args["PYTHON_IMAGE"].split(":")[1]
    required = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("-")[0].split("."))) >= tuple(map(int, required.split(".")))
    assert env_of(parse_dockerfile(DOCKER / "Dockerfile.cpu"))["SERVICE_DEVICE"] == "cpu"


@pytest.mark.parametrize(("extras", "wanted", "unwanted"), [("gpu,train", "onnxruntime-gpu>", "onnxruntime>"),
                                                         ("cpu,train", "onnxruntime>", "onnxruntime-gpu>")])
def test_install_deps_reads_pyproject(extras: str, wanted: str, unwanted: str) -> None:
    """Exactly one ONNX Runtime build per image (both in one environment shadow each other)."""
    printed = subprocess.run([sys.executable, "docker/install_deps.py", "--extras", extras, "--print"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    project = PYPROJECT["project"]
    optional = project["optional-dependencies"]
    expected = project["dependencies"] + [r for extra in extras.split(",") for r in optional[extra]]
    assert printed == expected
    assert any(r.startswith(wanted) for r in printed)
    assert not any(r.startswith(unwanted) for r in printed)


def test_install_deps_rejects_an_unknown_extra() -> None:
    result = subprocess.run([sys.executable, "docker/install_deps.py", "--extras", "gpus", "--print"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "unknown extra(s) ['gpus']" in result.stderr
