#!/usr/bin/env bash
# Train the quality levels q1..q4 on one GPU, all at once. Round 1 (from scratch):
#   bash benchmarks/imagecodec_gpu_train.sh OUT 430 8
# Round 2 (continue from round 1's checkpoints INIT/q*/checkpoint.pt, batch 16, lr 5e-4):
#   bash benchmarks/imagecodec_gpu_train.sh OUT 320 16 INIT 5e-4
# COMPARE=1 also trains baseline and phase2 from scratch at quality 3 with the same budget (cell comparison).
# CORPUS=/work/corpus (built by scripts/build_codec_corpus.py) trains on its photographs at several downscales
# and validates with the real bitstream every 500 steps (checkpoint.pt = the best); every run is resumable
# (--resume: run the same command again after an interruption).
set -euo pipefail
out=${1:-runs/imagecodec}; secs=${2:-430}; batch=${3:-8}; init=${4:-}; lr=${5:-1e-3}
mkdir -p "$out"
train() { python3 -m training.imagecodec.train "$@"; }
for q in 1 2 3 4; do
  extra=()
  [ -n "$init" ] && extra=(--init "$init/q$q/checkpoint.pt")
  [ -n "${CORPUS:-}" ] && extra+=(--images "$CORPUS/train" --scales 1 0.5 0.25 --eval-every 500)
  train --out "$out/q$q" --quality "$q" --size small --phase phase2 --steps 1000000 --seconds "$secs" \
      --batch "$batch" --crop 256 --lr "$lr" --device cuda --resume "${extra[@]}" > "$out/q$q.log" 2>&1 &
done
if [ "${COMPARE:-0}" = 1 ]; then
  for phase in baseline phase2; do
    train --out "$out/cmp_$phase" --quality 3 --size small --phase "$phase" --steps 1000000 --seconds "$secs" \
        --batch "$batch" --crop 256 --device cuda > "$out/cmp_$phase.log" 2>&1 &
  done
fi
wait
for f in "$out"/*.log; do echo "== $f"; tail -n 2 "$f"; done > "$out/train_logs.txt"
cat "$out/train_logs.txt"
