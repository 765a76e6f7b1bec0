#!/usr/bin/env bash
# The GPU runs behind the notes' figures, in one call on one GPU (about 9 minutes on an H100):
#   RUNS="probe codec traffic water" bash benchmarks/gpu_figures.sh OUT [CODEC_INIT] [BUDGET_S]
# probe   alone on the GPU: traffic training-step times (FP32 vs bf16, kernel profile of Phase 3 quick) and
#         the full-size (HPCM-Base) codec's encode/decode time of a 768x512 image;
# then, together, each for BUDGET_S seconds:
# codec   q1..q4 (continued from CODEC_INIT/q*/checkpoint.pt if given);
# traffic Phase 1, Phase 3 quick and deep on synthetic N=207, bf16 autocast (PHASE1_FP32=1: Phase 1 in FP32),
#         test tables at the end; TRAFFIC_DATA names a
#         prepared data folder (training.traffic.data.prepare_data) for machines without PyTables;
# water   the small config, then its evaluation against the gap-filling baselines.
# Logs and JSON go to OUT/logs; checkpoints to OUT/<run>.
set -uo pipefail
out=${1:?OUT}; init=${2:-}; budget=${3:-320}; runs=${RUNS:-probe codec traffic water}
mkdir -p "$out/logs"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
want() { [[ " $runs " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/logs/gpu.txt" 2>&1

if want probe; then
  timeout 100 python3 benchmarks/traffic_step_time.py --device cuda --steps 3 --profile quick \
    --out "$out/logs/traffic_step_time.json" > "$out/logs/traffic_step_time.txt" 2>&1
  timeout 60 python3 benchmarks/imagecodec_speed.py --size base --device cuda \
    > "$out/logs/imagecodec_speed_base.txt" 2>&1
fi
if want codec; then
  bash benchmarks/imagecodec_gpu_train.sh "$out/codec" "$budget" 16 "$init" "${CODEC_LR:-5e-4}" \
    > "$out/logs/codec_train.txt" 2>&1 &
fi
if want traffic; then
  for model in phase1 quick deep; do
    amp=(--amp); [ "$model" = phase1 ] && [ -n "${PHASE1_FP32:-}" ] && amp=()
    mkdir -p "$out/traffic_$model"
    [ -n "${TRAFFIC_DATA:-}" ] && cp -r "$TRAFFIC_DATA" "$out/traffic_$model/data"
    timeout $((budget + 200)) python3 benchmarks/traffic_metrics.py --models "$model" --device cuda --threads 2 \
      --time-budget-s "$budget" "${amp[@]}" --out "$out/traffic_$model" > "$out/logs/traffic_$model.txt" 2>&1 &
  done
fi
if want water; then
  ( timeout $((budget + 60)) python3 -m training.water.train --config small --n-train 4096 --n-val 256 \
      --steps 3500 --batch-size 64 --lr 2e-3 --time-limit "$budget" --eval-every 250 --device cuda --workers 4 \
      --threads 2 --out "$out/water" > "$out/logs/water_train.txt" 2>&1
    timeout 120 python3 -m training.water.evaluate --checkpoint "$out/water/best.pt" \
      --out "$out/logs/water_eval.json" > "$out/logs/water_eval.txt" 2>&1 ) &
fi
wait
for m in phase1 quick deep; do cp "$out/traffic_$m/benchmark.json" "$out/logs/traffic_$m.json" 2>/dev/null; done
cp "$out/water/metrics.json" "$out/logs/water_metrics.json" 2>/dev/null
cp "$out"/codec/*.log "$out/logs/" 2>/dev/null
echo done
