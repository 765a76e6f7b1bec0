#!/usr/bin/env bash
# Everything GPU-side of issue 13 in one go (about 10 minutes on one GPU), logs under OUT/:
#   bash benchmarks/gpu_check.sh [OUT] [REPOSITORY]
# 1. the GPU tests: ORT CUDA EP with IO binding, TorchScript on CUDA, the service on GPU, NVML metrics
#    (tests/platform/test_gpu.py, tests/deploy/test_gpu.py, `-m gpu`);
# 2. a codec stream round trip CPU->GPU and GPU->CPU (the known failure of learned codecs across devices:
#    a stream encoded on one device must decode bit-exactly on the other);
# 3. benchmarks/serving.py on GPU (tiny + traffic), then the service on GPU with every family's default;
# 4. FP16 parity per family (each graph of REPOSITORY run in FP32 and under FP16 on CUDA: max abs/rel err);
# 5. optional (TENSORRT=1): the same serving run with ORT's TensorRT EP and its engine cache.
# Without a GPU it says so, runs the CPU-runnable parts (a syntax/import dry run and the codec CPU->CPU
# round trip) and exits 0.
set -uo pipefail
out=${1:-gpu_check_out}; repo=${2:-model_repository}
py=${PYTHON:-python3}; [ -x .venv/bin/python ] && py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
step() { echo "== $1 ($(date +%T))" | tee -a "$out/summary.txt"; }
result() { echo "   $1: exit $2" | tee -a "$out/summary.txt"; }

gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
    && $py -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  gpu=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
  $py -c "import onnxruntime as o; print(o.get_available_providers())" >> "$out/gpu.txt" 2>&1
fi

step "dry run: scripts parse, modules import"
bash -n "$0" && $py -c "import benchmarks.serving" 2>/dev/null || $py -c "
import sys; sys.path.insert(0, 'benchmarks'); import serving; import service.runtimes.onnx, service.gc_tuning"
result "dry run" $?

# A codec stream made on device A must decode on device B (bit-exact entropy decoding needs identical
# scale indices on both): /image/compress on one service, /image/decompress on the other, both ways.
step "codec stream round trip across devices ($repo/imagecodec)"
devices="cpu cpu"; [ $gpu = 1 ] && devices="cpu cuda"
timeout 300 $py - "$repo" $devices > "$out/codec_roundtrip.txt" 2>&1 <<'EOF'
import io
import sys
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, "tests")
from testkit import LiveServer  # noqa: E402

repo, first, second = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
if not (repo / "imagecodec").is_dir():
    sys.exit(f"no imagecodec model in {repo}")
servers = {}
try:
    for device in dict.fromkeys([first, second]):
        servers[device] = LiveServer(repo, Path(f"/tmp/gpu_check_{device}.log"),
                                     env={"SERVICE_DEVICE": device, "SERVICE_MODELS": "imagecodec"})
        servers[device].wait_ready(240)
    rng = np.random.default_rng(0)
    image = (rng.random((96, 128, 3)) * 255).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    failures = 0
    for enc, dec in [(first, second), (second, first)]:
        r = httpx.post(f"{servers[enc].url}/image/compress", files={"image": ("a.png", png.getvalue(), "image/png")},
                       timeout=120)
        d = httpx.post(f"{servers[dec].url}/image/decompress", content=r.content, timeout=120)
        same = httpx.post(f"{servers[enc].url}/image/decompress", content=r.content, timeout=120)
        ok = r.status_code == d.status_code == same.status_code == 200 and d.content == same.content
        failures += not ok
        print(f"encode on {enc}, decode on {dec}: compress {r.status_code}, decode {d.status_code}, "
              f"identical to same-device decode: {ok}")
    sys.exit(failures)
finally:
    for server in servers.values():
        server.terminate()
EOF
result "codec round trip" $?
tail -3 "$out/codec_roundtrip.txt" | tee -a "$out/summary.txt"

if [ $gpu = 0 ]; then
  echo "no CUDA GPU visible: GPU tests, GPU serving, FP16 parity and TensorRT skipped; script ready" \
    | tee -a "$out/summary.txt"
  exit 0
fi

step "GPU tests (-m gpu)"
timeout 240 $py -m pytest tests/platform/test_gpu.py tests/deploy/test_gpu.py -m gpu -q \
  -p no:cacheprovider > "$out/gpu_tests.txt" 2>&1
result "GPU tests" $?
tail -3 "$out/gpu_tests.txt" | tee -a "$out/summary.txt"

traffic=()
[ -d "$repo/traffic" ] && traffic=(--traffic "$(ls -d "$repo"/traffic/*/ | sort -V | tail -1)")
step "serving benchmark on GPU"
timeout 150 $py benchmarks/serving.py --device cuda --seconds 3 "${traffic[@]}" \
  --json-out "$out/serving_cuda.json" > "$out/serving_cuda.txt" 2>&1
result "serving.py --device cuda" $?
grep -E "MET|MISS|req/s" "$out/serving_cuda.txt" | tee -a "$out/summary.txt"

step "FP16 parity per family ($repo)"
timeout 120 $py - "$repo" > "$out/fp16_parity.txt" 2>&1 <<'EOF'
import sys
from pathlib import Path

import numpy as np
import torch

from families.manifest import Manifest
from service.runtimes import open_runtime

# FP32 graph on CUDA vs the same TorchScript graph in half precision (ONNX graphs: ORT FP32 vs FP32 inputs
# rounded to FP16, which bounds what an FP16 client sends): max abs and relative error per output.
for manifest_path in sorted(Path(sys.argv[1]).glob("*/*/manifest.json")):
    manifest = Manifest.read(manifest_path.parent)
    for name, graph in manifest.graphs.items():
        runtime = open_runtime(manifest_path.parent, graph, "cuda")
        inputs = runtime.sample_inputs()
        want = runtime.run(inputs)
        half = {k: v.astype(np.float16).astype(v.dtype) if v.dtype == np.float32 else v for k, v in inputs.items()}
        if graph.format == "torchscript":
            module = runtime.module.half()
            with torch.inference_mode():
                got = module(*[torch.from_numpy(half[i.name]).cuda().half() if half[i.name].dtype == np.float32
                               else torch.from_numpy(half[i.name]).cuda() for i in graph.inputs])
            got = got if isinstance(got, tuple) else (got,)
            got = {o.name: t.float().cpu().numpy() for o, t in zip(graph.outputs, got)}
        else:
            got = runtime.run(half)
        for out_name, ref in want.items():
            if ref.dtype.kind != "f":
                continue
            err = np.abs(got[out_name].astype(np.float64) - ref)
            rel = err.max() / max(np.abs(ref).max(), 1e-12)
            print(f"{manifest.name} v{manifest.version} {name}.{out_name}: max abs {err.max():.3e} rel {rel:.3e}")
EOF
result "FP16 parity" $?
cat "$out/fp16_parity.txt" | tail -20 | tee -a "$out/summary.txt"

if [ -n "${TENSORRT:-}" ]; then
  step "TensorRT EP (engine cache in \$TMPDIR/ort_trt_cache)"
  timeout 200 $py benchmarks/serving.py --device cuda --seconds 3 --only tiny --env SERVICE_ORT_TENSORRT=true \
    > "$out/serving_tensorrt.txt" 2>&1
  result "serving.py with TensorRT" $?
  grep -E "MET|MISS|req/s" "$out/serving_tensorrt.txt" | tee -a "$out/summary.txt"
fi
echo done | tee -a "$out/summary.txt"
