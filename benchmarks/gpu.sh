#!/usr/bin/env bash
# GPU benchmark for one H100/H200-class GPU, within BUDGET seconds in all (default 600):
#   1. benchmarks/gpu_check.py: every path on the GPU in 2–4 minutes (training steps at the gpu
#      preset's size, memory, host syncs, bf16 convergence, one grid cell end to end);
#   2. bf16 throughput and MFU of the forward iteration at batch 512 (width 256, 8 heads, sudoku grid);
#   3. the GPU-scale preset for the most informative configurations (recall none / external /
#      internal with post norm, internal with pre norm; the REGIMES) on sudoku and prefix sums,
#      for the time left: each sweep command runs under `timeout`, so the script ends on time; a
#      run cut short resumes when the same command is run again;
#   4. RESULTS.md-style tables for the runs finished.
# Environment knobs (for a CPU check: PRESET=tiny DEVICE=cpu STEPS=4 BUDGET=240 bash benchmarks/gpu.sh):
#   PRESET (seed-gpu; gpu: deqloop's own grid), DEVICE (cuda), STEPS (300 per run), BUDGET (600 s for everything),
#   OUT (runs/gpu), MFU_BATCH (512), REGIMES (paper for the seed presets, else progressive,phantom,implicit),
#   LRS (0.001, the seed presets' learning rates to run), SUDOKU_EXTREME (a folder with train.csv and test.csv), RESULTS ($OUT/summaries: the run summaries, kept apart from the cpu
#   preset's committed results/runs, whose run names they share), REPORT_SECONDS (60: kept for step 4),
#   CHECK_OUT (${OUT}_check: the gpu check's runs and gpu_check.json)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
PRESET=${PRESET:-seed-gpu}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-300}
BUDGET=${BUDGET:-600}
OUT=${OUT:-runs/gpu}
RESULTS=${RESULTS:-$OUT/summaries}
MFU_BATCH=${MFU_BATCH:-512}
case "$PRESET" in
  seed-*) REGIMES=${REGIMES:-paper}; LRS=${LRS:-0.001} ;;
  *) REGIMES=${REGIMES:-progressive,phantom,implicit}; LRS=${LRS:-} ;;
esac
REPORT_SECONDS=${REPORT_SECONDS:-60}
CHECK_OUT=${CHECK_OUT:-${OUT}_check}  # beside OUT: the check's runs are not the sweep's
mkdir -p "$OUT"
start=$SECONDS
left() { echo $((BUDGET - REPORT_SECONDS - (SECONDS - start))); }
# run "$@" for at most $1 seconds; a timeout (exit 124, or 137 when a step outlived TERM by 20 s and
# was killed: its run resumes from its last checkpoint) is expected and does not stop the script
bounded() {
  local limit=$1 rc=0; shift; [ "$limit" -gt 0 ] || return 0
  timeout --signal=TERM --kill-after=20 "$limit" "$@" || rc=$?
  [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]
}

echo "== gpu check =="
if [ "$PRESET" = "tiny" ]; then CHECK="--tiny --steps 1 --cell-steps 2"; else CHECK=""; fi
bounded "$(left)" $PY benchmarks/gpu_check.py --device "$DEVICE" $CHECK --out "$CHECK_OUT" | tee "$OUT/gpu_check.txt"

echo "== forward-iteration throughput (bf16 autocast) =="
if [ "$DEVICE" = "cpu" ]; then
  bounded "$(left)" $PY benchmarks/mfu.py --device cpu --dtype fp32 --batch 8 --width 32 --heads 4 --iters 3 --warmup 1 | tee "$OUT/mfu.txt"
else
  for recall in none internal; do
    bounded "$(left)" $PY benchmarks/mfu.py --device "$DEVICE" --batch "$MFU_BATCH" --width 256 --heads 8 --grid 9,9 \
      --recall "$recall" --peak-tflops "${PEAK_TFLOPS:-989}" | tee -a "$OUT/mfu.txt"
  done
fi

echo "== sweep: preset $PRESET, $STEPS steps per run, until $((BUDGET - REPORT_SECONDS)) s =="
case "$PRESET" in
  seed-*) DEFAULT_TASKS=prefix_sums; [ -n "${SUDOKU_EXTREME:-}" ] && DEFAULT_TASKS=sudoku,prefix_sums ;;
  *) DEFAULT_TASKS=sudoku,prefix_sums ;;
esac
TASKS=${TASKS:-$DEFAULT_TASKS}
EXTRA=()
[ -n "$LRS" ] && EXTRA+=(--lrs "$LRS")
[ -n "${SUDOKU_EXTREME:-}" ] && EXTRA+=(--sudoku-extreme "$SUDOKU_EXTREME")
SPECS=${SPECS:-"none,external,internal:post internal:pre"}   # recalls:norms groups, most informative first
if [ "$PRESET" = "tiny" ]; then TASKS=prefix_sums; SPECS="none,internal:post"; fi
for spec in $SPECS; do
  set -- ${spec%%:*} ${spec##*:}
  limit=$(left)
  [ "$limit" -gt 0 ] || break
  bounded "$limit" $PY -m experiments.sweep --preset "$PRESET" --tasks "$TASKS" --seeds 0 --recalls "$1" --norms "$2" \
    --regimes "$REGIMES" --steps "$STEPS" --device "$DEVICE" --out "$OUT" --results "$RESULTS" --time-limit "$limit" \
    "${EXTRA[@]}"
done

echo "== results =="
if compgen -G "$RESULTS/*" > /dev/null || compgen -G "$RESULTS/*/*" > /dev/null; then
  $PY -m experiments.report "$OUT" --out "$OUT/RESULTS.md" --plots "$OUT/plots"
  cat "$OUT/RESULTS.md"
else
  echo "no run finished within the budget"
fi
echo "gpu.sh: $((SECONDS - start)) s of a $BUDGET s budget"
