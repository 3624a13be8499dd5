#!/usr/bin/env bash
# GPU benchmark for one H200-class GPU, about 10 minutes:
#   1. bf16 throughput and MFU of the forward iteration at batch 512 (width 256, 8 heads, sudoku grid);
#   2. the GPU-scale preset for the most informative configurations (recall none / external /
#      internal with post norm, internal with pre norm; progressive and implicit training) on sudoku
#      and prefix sums, stopping new runs after a time budget;
#   3. RESULTS.md-style tables for those runs.
# Environment knobs (for a CPU check: PRESET=tiny DEVICE=cpu STEPS=4 BUDGET=60 bash benchmarks/gpu.sh):
#   PRESET (gpu), DEVICE (cuda), STEPS (1500 per run), BUDGET (420 s for the sweep), OUT (runs/gpu), MFU_BATCH (512),
#   REGIMES (progressive,phantom,implicit), RESULTS ($OUT/summaries: the run summaries, kept apart from the cpu
#   preset's committed results/runs, whose run names they share)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
PRESET=${PRESET:-gpu}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-1500}
BUDGET=${BUDGET:-420}
OUT=${OUT:-runs/gpu}
RESULTS=${RESULTS:-$OUT/summaries}
MFU_BATCH=${MFU_BATCH:-512}
REGIMES=${REGIMES:-progressive,phantom,implicit}
mkdir -p "$OUT"

echo "== forward-iteration throughput (bf16 autocast) =="
if [ "$DEVICE" = "cpu" ]; then
  $PY benchmarks/mfu.py --device cpu --dtype fp32 --batch 8 --width 32 --heads 4 --iters 3 --warmup 1 | tee "$OUT/mfu.txt"
else
  for recall in none internal; do
    $PY benchmarks/mfu.py --device "$DEVICE" --batch "$MFU_BATCH" --width 256 --heads 8 --grid 9,9 \
      --recall "$recall" --peak-tflops "${PEAK_TFLOPS:-989}" | tee -a "$OUT/mfu.txt"
  done
fi

echo "== sweep: preset $PRESET, $STEPS steps per run, $BUDGET s budget =="
TASKS=${TASKS:-sudoku,prefix_sums}
SPECS=${SPECS:-"none,external,internal:post internal:pre"}   # recalls:norms groups, most informative first
if [ "$PRESET" = "tiny" ]; then TASKS=prefix_sums; SPECS="none,internal:post"; fi
start=$SECONDS
for spec in $SPECS; do
  set -- ${spec%%:*} ${spec##*:}
  left=$((BUDGET - (SECONDS - start)))
  [ "$left" -gt 0 ] || break
  $PY -m experiments.sweep --preset "$PRESET" --tasks "$TASKS" --seeds 0 --recalls "$1" --norms "$2" --regimes "$REGIMES" \
    --steps "$STEPS" --device "$DEVICE" --out "$OUT" --results "$RESULTS" --time-limit "$left"
done

echo "== results =="
$PY -m experiments.report "$OUT" --out "$OUT/RESULTS.md" --plots "$OUT/plots"
cat "$OUT/RESULTS.md"
