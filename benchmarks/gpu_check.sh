#!/usr/bin/env bash
# The GPU check of issue 27, for the machine this workplace lends (nvidia-h100-x1 / nvidia-h200: python3 is
# Python 3.12 at /opt/torch/.venv with torch 2.11 + CUDA, onnxruntime without CUDA, no fastapi & co).
#
# THE DEVICE CALL, after `bash benchmarks/gpu_prepare.sh` here (wheels into .whl/, weld checkpoint into .gpu/):
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".gpu"], timeout_s=480)
# It ends within GPU_CHECK_BUDGET_S (default 450 s) of its start; the results come back as $OUT/summary.txt
# (every figure), $OUT/gpu_check.json (the same, structured) and $OUT/logs.tar.gz (each stage's log).
#
# Stages, each under `timeout` with its own budget (cut to what is left of the whole), each failure recorded
# and the next stage run anyway:
#   env        carried wheels installed into a target dir on PYTHONPATH (when the service's packages are missing)
#   build      the default versions built there, with that machine's torch (no TorchScript file crosses torch
#              versions): traffic, water, imagecodec from the shipped checkpoints (export.defaults), weld from
#              .gpu/weld/best.pt; every ONNX graph gets its TorchScript twin (the CUDA path there)
#   gpu_tests  tests/platform/test_gpu.py -m gpu: torch runtime on CUDA (every built twin too), the service
#              on CUDA, NVML metrics
#   codec_rt   a codec stream CPU (ONNX Runtime) -> CUDA (TorchScript) and CUDA -> CPU: latent bit-exact
#   serving    benchmarks/gpu_serving.py: service vs raw torch module per family at max batch, batching on/off
#              (benchmarks/serving.py too when wrk is installed; the lent machine has none)
#   precision  benchmarks/gpu_precision.py: FP16 / BF16 parity and speed per family, with a verdict
#   codec_speed encode/decode time at 768x512 and 2048x2048 on the GPU
# Without a GPU (here: `bash benchmarks/gpu_check.sh`) it runs env, build and the CPU-side round trip
# (ONNX Runtime <-> TorchScript on the CPU), says what it skipped and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${OUT:-${1:-/tmp/gpu_check_out}}
work=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
budget_total=${GPU_CHECK_BUDGET_S:-450}
scale=1  # stage budgets x scale: 4 without a GPU (a CPU dry run on a small shared machine builds slower)
t_start=$(date +%s)
logs=$work/logs; repo=$work/repository
mkdir -p "$out" "$logs" "$work/json"
summary=$out/summary.txt; : > "$summary"; : > "$work/stages.tsv"
export PYTHONUNBUFFERED=1 root work repo logs
py=${PYTHON:-python3}; [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && py=$root/.venv/bin/python
export py

say() { echo "$*" | tee -a "$summary"; }
left() { echo $(( budget_total - ($(date +%s) - t_start) )); }
# stage NAME BUDGET_S CMD...: CMD under timeout (its budget, or what is left less a reserve for the summary),
# output in logs/NAME.log, status and seconds in stages.tsv and the summary.
stage() {
  local name=$1 budget=$2; shift 2
  local remaining=$(( $(left) - 20 ))
  if [ "$remaining" -lt 15 ]; then
    say "== $name: skipped, the time budget is spent"; printf '%s\tskipped\t0\n' "$name" >> "$work/stages.tsv"; return 0
  fi
  budget=$(( budget * scale ))
  [ "$budget" -gt "$remaining" ] && budget=$remaining
  local t0; t0=$(date +%s)
  say "== $name (budget ${budget} s, at $(( t0 - t_start )) s)"
  # Through bash, so that a stage may be one of the functions below (exported), all under the one timeout.
  timeout --kill-after=10 "$budget" bash -c '"$@"' "$name" "$@" > "$logs/$name.log" 2>&1
  local rc=$? dt=$(( $(date +%s) - t0 ))
  if [ $rc = 124 ] || [ $rc = 137 ]; then say "   $name: TIMED OUT after ${dt} s"; else say "   $name: exit $rc in ${dt} s"; fi
  printf '%s\t%s\t%s\n' "$name" "$rc" "$dt" >> "$work/stages.tsv"
}
figures() { grep -hE "$2" "$logs/$1.log" 2>/dev/null | sed 's/^/   /' | tee -a "$summary"; }
skip() { say "== $1: skipped ($2)"; printf '%s\tskipped\t0\n' "$1" >> "$work/stages.tsv"; }

# ---- env ----------------------------------------------------------------------------------------------------
install_wheels() {
  if $py -c "import fastapi, pydantic_settings, orjson, constriction, multipart, httptools" 2>/dev/null; then
    echo "the service's packages are importable already: nothing to install"; return 0
  fi
  ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/ (run benchmarks/gpu_prepare.sh and carry .whl)"; return 1; }
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" .whl/*.whl
}
export -f install_wheels
stage env 60 install_wheels
[ -d "$work/site" ] && export PYTHONPATH="$work/site:$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="${PYTHONPATH:-$root}"
gpu=0
$py -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && gpu=1
if [ $gpu = 0 ]; then scale=${GPU_CHECK_SCALE:-4}; budget_total=${GPU_CHECK_BUDGET_S:-1800}; fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  $py -c "import sys, torch, onnxruntime as o; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| cuda', torch.version.cuda, torch.cuda.is_available(), '| onnxruntime', o.__version__, o.get_available_providers())"
} 2>&1 | sed 's/^/   /' | tee -a "$summary"

# ---- build --------------------------------------------------------------------------------------------------
build() {
  local threads=$(( $(nproc) / 4 )); [ $threads -lt 1 ] && threads=1
  local pids=()
  for family in traffic water imagecodec; do
    OMP_NUM_THREADS=$threads $py -m export.defaults --repository "$repo" --workdir "$work/defaults" \
      --families $family > "$logs/build_$family.log" 2>&1 & pids+=($!)
  done
  if [ -f .gpu/weld/best.pt ]; then
    OMP_NUM_THREADS=$threads $py -m export weld --checkpoint .gpu/weld/best.pt --repository "$repo" \
      > "$logs/build_weld.log" 2>&1 & pids+=($!)
  else
    echo "weld: no .gpu/weld/best.pt (benchmarks/gpu_prepare.sh); trying the default build (needs PyAV)"
    OMP_NUM_THREADS=$threads $py -m export.defaults --repository "$repo" --workdir "$work/defaults" \
      --families weld > "$logs/build_weld.log" 2>&1 & pids+=($!)
  fi
  local failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
  grep -h "built\|failed\|Error" "$logs"/build_*.log | grep -v Warning | tail -20
  $py - "$repo" <<'EOF'
import sys
from pathlib import Path

from families.manifest import Manifest

for path in sorted(Path(sys.argv[1]).glob("*/*/manifest.json")):
    m = Manifest.read(path.parent)
    twins = [g.torchscript for g in m.graphs.values() if g.torchscript is not None]
    worst = max((t.parity.max_abs_err for t in twins), default=float("nan"))
    print(f"built {m.name} v{m.version}: {len(m.graphs)} graph(s), {len(twins)} TorchScript twin(s) "
          f"({', '.join(sorted({t.method for t in twins}))}; worst CPU parity {worst:.2g}), "
          f"missing: {m.provenance.get('torchscript_missing') or 'none'}")
EOF
  return $failed
}
export -f build
stage build 150 build
figures build "^built |built .* in "

# ---- GPU tests ----------------------------------------------------------------------------------------------
if [ $gpu = 1 ]; then
  export GPU_CHECK_REPOSITORY=$repo  # test_gpu.py runs every twin built above on CUDA too
  stage gpu_tests 80 $py -m pytest tests/platform/test_gpu.py -m gpu -q -p no:cacheprovider
  figures gpu_tests "passed|failed|skipped|error"
else
  skip gpu_tests "no CUDA GPU visible"
fi

# ---- codec round trip ---------------------------------------------------------------------------------------
codec_dir=$(ls -d "$repo"/imagecodec-q2/*/ 2>/dev/null | sort -V | tail -1)
[ -z "$codec_dir" ] && codec_dir=$(ls -d "$repo"/imagecodec*/*/ 2>/dev/null | head -1)
if [ -n "$codec_dir" ]; then
  stage codec_rt 75 $py benchmarks/gpu_codec.py roundtrip "$codec_dir" --json "$work/json/codec_roundtrip.json"
  figures codec_rt "^codec round trip"
else
  skip codec_rt "no imagecodec version was built"
fi

# ---- serving ------------------------------------------------------------------------------------------------
if [ $gpu = 1 ]; then
  stage serving 120 $py benchmarks/gpu_serving.py "$repo" --device cuda --seconds 3 --log-dir "$logs" \
    --json "$work/json/serving.json"
  figures serving "^(raw|service|ratio|not in) "
  if command -v wrk >/dev/null 2>&1; then
    stage serving_wrk 60 $py benchmarks/serving.py --device cuda --seconds 3 --only traffic \
      --traffic "$(ls -d "$repo"/traffic/*/ | sort -V | tail -1)" --json-out "$work/json/serving_wrk.json"
    figures serving_wrk "MET|MISS|req/s"
  fi
else
  skip serving "no CUDA GPU visible"
fi

# ---- precision ----------------------------------------------------------------------------------------------
if [ $gpu = 1 ]; then
  stage precision 75 $py benchmarks/gpu_precision.py --device cuda --seconds 0.25 --json "$work/json/precision.json"
  figures precision "^precision|failed"
else
  skip precision "no CUDA GPU visible"
fi

# ---- codec speed --------------------------------------------------------------------------------------------
if [ $gpu = 1 ] && [ -n "$codec_dir" ]; then
  stage codec_speed 60 $py benchmarks/gpu_codec.py speed "$codec_dir" --sizes 768x512,2048x2048 \
    --json "$work/json/codec_speed.json"
  figures codec_speed "^codec speed"
else
  skip codec_speed "no CUDA GPU visible"
fi

# ---- results ------------------------------------------------------------------------------------------------
$py - "$work" "$out/gpu_check.json" "$gpu" "$(( $(date +%s) - t_start ))" <<'EOF'
import json
import sys
from pathlib import Path

work, target = Path(sys.argv[1]), Path(sys.argv[2])
report = {"gpu": sys.argv[3] == "1", "seconds": int(sys.argv[4]), "stages": {}}
for line in (work / "stages.tsv").read_text().splitlines():
    name, status, seconds = line.split("\t")
    report["stages"][name] = {"status": status, "seconds": int(seconds)}
for part in sorted((work / "json").glob("*.json")):
    report[part.stem] = json.loads(part.read_text())
target.write_text(json.dumps(report, indent=2))
EOF
tar -czf "$out/logs.tar.gz" -C "$work" logs 2>/dev/null
failed=$(awk -F'\t' '$2 != "0" && $2 != "skipped" {print $1}' "$work/stages.tsv" | tr '\n' ' ')
say "== done in $(( $(date +%s) - t_start )) s; gpu=$gpu; failed stages: ${failed:-none}"
[ $gpu = 0 ] && say "no CUDA GPU: gpu_tests, serving, precision and codec_speed skipped; the script is ready for a device"
# Exit 0 where every stage it ran passed (without a GPU: the CPU-side ones).
[ -z "$failed" ]
