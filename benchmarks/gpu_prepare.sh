#!/usr/bin/env bash
# Prepare the device call of benchmarks/gpu_check.sh, here on the CPU (issue 27):
#   bash benchmarks/gpu_prepare.sh            # wheels + size check + the Python 3.12 install proof
# 1. downloads into the git-ignored .whl/ the cp312 manylinux wheels of what the service needs and the
#    device lacks (benchmarks/gpu_wheels.py: pyproject's requirements against benchmarks/device_packages.txt,
#    then their requirements until none is missing; one version each);
# 2. proves the install as the device does it: a Python 3.12 venv (pyenv's 3.12) holding the device's own
#    packages that the service uses (torch 2.11, transformers 5.17 etc., kept in $PROOF_VENV and reused), then
#    `pip install --no-index --no-deps --target DIR .whl/*.whl` and, with PYTHONPATH=DIR, every module of
#    service/, families/, export/ imported and the app built; the first run downloads torch 2.11 with its CUDA
#    libraries (~3 GB, a few minutes), later runs take seconds;
# 3. trains the weld default into .gpu/weld/ (best.pt, gallery.npz, eval.json; ~1-2 min) in that venv;
# 4. checks that the working tree (tracked + untracked-not-ignored) plus .whl and .gpu stays under the 64 MiB
#    one call carries (benchmarks/gpu_payload.py; tests/platform/test_gpu_payload.py runs the same check).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
py=.venv/bin/python; [ -x "$py" ] || py=python3
proof_venv=${PROOF_VENV:-$HOME/.cache/research-serving/py312-device}
started=$(date +%s)

for folder in .whl .gpu; do  # carried, never committed
  git check-ignore -q "$folder/x" || echo "/$folder/" >> .git/info/exclude
done

echo "== 1. wheels into .whl/"
$py benchmarks/gpu_wheels.py download --dest .whl

echo "== 2. the install in Python 3.12, as the device does it"
py312=${PY312:-}
if [ -z "$py312" ]; then
  for candidate in "$HOME"/.pyenv/versions/3.12*/bin/python3.12 "$(command -v python3.12 || true)"; do
    [ -x "$candidate" ] && { py312=$candidate; break; }
  done
fi
[ -x "$py312" ] || { echo "no Python 3.12 (pyenv install 3.12, or PY312=...)"; exit 1; }
# The device's own packages that service/, families/ and export/ import, at the device's versions where
# benchmarks/device_packages.txt gives them (pip skips what is installed: seconds after the first run).
[ -x "$proof_venv/bin/python" ] || "$py312" -m venv "$proof_venv"
"$proof_venv/bin/python" -m pip install --quiet --upgrade pip
"$proof_venv/bin/python" -m pip install --quiet torch==2.11.0 onnx==1.23.1 onnxruntime==1.30.0 \
  transformers==5.17.0 safetensors==0.8.0 numpy pillow scipy h5py pandas prometheus-client httpx pyyaml \
  anyio h11 click uvloop annotated-doc packaging pytest pytest-timeout nvidia-ml-py scikit-learn scikit-image \
  matplotlib 2>&1 | grep -v "^WARNING: Location" || true
target=$(mktemp -d /tmp/gpu-site.XXXXXX)
trap 'rm -rf "$target"' EXIT  # kept until the weld build below has used it
"$proof_venv/bin/python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$target" .whl/*.whl
# No checkout package on the path but the tree itself (the device runs from the repository root).
PYTHONPATH="$target:$root" "$proof_venv/bin/python" - <<'EOF'
import importlib
import pkgutil
import sys
import time

import torch

started = time.perf_counter()
modules = []
for package in ("service", "families", "export"):
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        modules.append(info.name)
failed = {}
for name in modules:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        failed[name] = repr(exc)
# faiss (an optional extra) and PyAV (left out: size) are imported lazily; nothing else may be missing.
failed = {k: v for k, v in failed.items() if "faiss" not in v and "'av'" not in v}
# The carried packages must come from the target dir, not from anything the proof venv happens to hold.
for name in ("fastapi", "starlette", "uvicorn", "pydantic", "pydantic_core", "pydantic_settings", "orjson",
             "constriction", "httptools", "multipart"):
    where = importlib.import_module(name).__file__ or ""
    if "/gpu-site." not in where:
        failed[name] = f"imported from {where}, not from the carried wheels"
from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402

app = create_app(Settings(model_repository="/nonexistent", models=""))
print(f"python {sys.version.split()[0]}, torch {torch.__version__}: imported {len(modules)} modules of "
      f"service/, families/, export/ and built the app ({len(app.routes)} routes) in "
      f"{time.perf_counter() - started:.1f} s")
if failed:
    sys.exit(f"imports that fail with the carried wheels: {failed}")
EOF
echo "== 3. the weld checkpoint into .gpu/weld/, trained with the device's transformers"
# Its synthetic videos need PyAV (too large to carry), so it is trained here, in the proof venv: the weld
# state dict follows the transformers version (5.2x renamed the attention weights of DINOv2 and AST), and a
# checkpoint of this checkout's .venv would not load there. Weights only: the device exports it itself.
want=$("$proof_venv/bin/python" -c "import transformers; print(transformers.__version__)")
if [ ! -f .gpu/weld/best.pt ] || [ "$(cat .gpu/weld/transformers_version 2>/dev/null)" != "$want" ]; then
  "$proof_venv/bin/python" -m pip install --quiet av 2>&1 | grep -v "^WARNING: Location" || true  # here only
  work=$(mktemp -d /tmp/gpu-weld.XXXXXX)
  PYTHONPATH="$target:$root" "$proof_venv/bin/python" -c "import sys; from pathlib import Path; \
from training.weld.default import build_default; print(build_default(Path(sys.argv[1])))" "$work" | tail -1
  mkdir -p .gpu/weld
  cp "$work"/run/best.pt "$work"/run/gallery.npz "$work"/run/eval.json .gpu/weld/
  echo "$want" > .gpu/weld/transformers_version
  rm -rf "$work"
fi
ls -l .gpu/weld

echo "== 4. size of one device call (tree + .whl + .gpu)"
$py benchmarks/gpu_payload.py --carry .whl --carry .gpu

echo "gpu_prepare: ready in $(( $(date +%s) - started )) s; carry .whl and .gpu on the device call (docs/deployment.md)"
