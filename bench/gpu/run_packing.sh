#!/usr/bin/env bash
# The packing benchmark on the GPU machine (issue 11): the Unsloth packing test, then for each size one process of
# bench/gpu/packing_bench.py (four paths, interleaved rounds), then the summary table and loss-curve PNG.
#
#   device run (carry .gpu-kit):  SIZES=1b PAIRS=3 STEPS=12 WARMUP=2 bench/gpu/run_packing.sh
# Settings: SIZES, PAIRS, STEPS, WARMUP, ROWS, GPU_TEST (1: run the GPU-marked packing test first), OUT, BENCH_WORK,
# PER_SIZE_TIMEOUT (seconds).
set -uo pipefail
cd "$(dirname "$0")/../.."
. bench/gpu/setup_env.sh
OUT="${OUT:-/tmp/bench-out}"
WORK="${BENCH_WORK:-/tmp/bench}"
mkdir -p "$OUT" "$WORK"
LOG="$OUT/packing.log"
echo "== $(date -u +%FT%TZ) sizes=${SIZES:-1b} pairs=${PAIRS:-3} steps=${STEPS:-12} warmup=${WARMUP:-2}" | tee -a "$LOG"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
test_pid=""
if [ "${GPU_TEST:-1}" = "1" ]; then  # beside the benchmark (its own process; the GPU has room for both)
  ( timeout 300 python3 -m pytest tests/test_packing.py -q -x -p no:cacheprovider -k "unsloth or equal_unpacked" \
      >"$OUT/gpu-test.log" 2>&1; echo "pytest exit $?" >>"$OUT/gpu-test.log" ) &
  test_pid=$!
fi
for size in ${SIZES:-1b}; do
  echo "== packing_bench $size $(date -u +%T)" | tee -a "$LOG"
  timeout "${PER_SIZE_TIMEOUT:-480}" python3 bench/gpu/packing_bench.py --work "$WORK" --size "$size" \
    --pairs "${PAIRS:-3}" --steps "${STEPS:-12}" --warmup "${WARMUP:-2}" --rows "${ROWS:-600}" \
    --out "$OUT/packing.jsonl" >>"$LOG" 2>&1
  echo "== $size exit $?" | tee -a "$LOG"
  grep "^bench:" "$LOG" | tail -n 14
done
[ -n "$test_pid" ] && wait "$test_pid" && tail -n 15 "$OUT/gpu-test.log" | tee -a "$LOG"
python3 bench/gpu/summarize_packing.py "$OUT/packing.jsonl" --png "$OUT/packing.png" | tee "$OUT/packing-summary.md"
