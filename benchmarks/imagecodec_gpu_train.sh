#!/usr/bin/env bash
# Train the quality levels on one GPU, all at once (the device machine has torch but not fastapi, so the
# service.families package __init__ is bypassed). Round 1 (from scratch):
#   bash benchmarks/imagecodec_gpu_train.sh OUT 430 8
# Round 2 (continue from round 1's checkpoints in INIT/q*/checkpoint.pt, batch 16):
#   bash benchmarks/imagecodec_gpu_train.sh OUT 520 16 INIT
# plus, for the phase comparison, baseline and phase2 from scratch at quality 3 with the same budget.
set -euo pipefail
out=${1:-runs/imagecodec}; secs=${2:-430}; batch=${3:-8}; init=${4:-}
mkdir -p "$out"
run() {
python3 - "$@" <<'PY'
import runpy, sys, types
pkg = types.ModuleType("service.families"); pkg.__path__ = ["service/families"]; sys.modules["service.families"] = pkg
sys.argv = ["train"] + sys.argv[1:]
runpy.run_module("training.imagecodec.train", run_name="__main__")
PY
}
for q in 1 2 3 4; do
  extra=()
  [ -n "$init" ] && extra=(--init "$init/q$q/checkpoint.pt")
  run --out "$out/q$q" --quality "$q" --size small --phase phase2 --steps 1000000 --seconds "$secs" \
      --batch "$batch" --crop 256 --device cuda "${extra[@]}" > "$out/q$q.log" 2>&1 &
done
if [ -n "$init" ]; then
  for phase in baseline phase2; do
    run --out "$out/cmp_$phase" --quality 3 --size small --phase "$phase" --steps 1000000 --seconds "$secs" \
        --batch "$batch" --crop 256 --device cuda > "$out/cmp_$phase.log" 2>&1 &
  done
fi
wait
for f in "$out"/*.log; do echo "== $f"; tail -n 2 "$f"; done > "$out/train_logs.txt"
rm -f "$out"/*.log
cat "$out/train_logs.txt"
