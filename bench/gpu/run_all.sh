#!/usr/bin/env bash
# The Unsloth-vs-HF GPU benchmark: four paths, each in its own process, on the same generated data.
#
#   raw_hf          hand-written loop: transformers + bitsandbytes 4-bit + peft      (bench/gpu/raw_loop.py)
#   raw_unsloth     hand-written loop: Unsloth FastLanguageModel                     (bench/gpu/raw_loop.py)
#   recipe_hf       python3 -m recipetune run recipes/llama32_finetome.toml load.use=hf      + overrides
#   recipe_unsloth  python3 -m recipetune run recipes/llama32_finetome.toml load.use=unsloth + overrides
#
# QLoRA r=16 alpha=16 on the seven projections, seq 2048, batch 2, no gradient accumulation, on
# random-initialised Llama-3.2-1B / 3B architectures (bench/gpu/prepare.py). The recipe runs keep the
# recipe's memory reporter and drop its exports (export=[]): only training is measured. One JSON line per path
# and size goes to $OUT/bench.jsonl; every process's output to $OUT/bench.log.
#
# Usage (repository root, GPU machine, .gpu-kit carried):
#   SIZES=1b,3b STEPS=35 WARMUP=5 bench/gpu/run_all.sh
# Settings (environment): SIZES, STEPS (optimizer steps per path, warm-up included), WARMUP (steps left
# out of the throughput), PATHS (comma list, in run order), ROWS (generated conversations),
# BENCH_WORK (models, data, run folders; default /tmp/bench), OUT (results; default /tmp/bench-out),
# PER_PATH_TIMEOUT (seconds, default 420), MAX_SEQ_LENGTH (default 2048).
# A CPU dry run of the scripts (no GPU, tiny model; checks plumbing only):
#   BENCH_NO_KIT=1 SIZES=tiny STEPS=3 WARMUP=1 ROWS=12 MAX_SEQ_LENGTH=256 PATHS=raw_hf,recipe_hf \
#     RAW_ARGS=--cpu-dry-run EXTRA_OVERRIDES="load.load_in_4bit=false train.optim=adamw_torch" bench/gpu/run_all.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
. bench/gpu/setup_env.sh
OUT="${OUT:-/tmp/bench-out}"
WORK="${BENCH_WORK:-/tmp/bench}"
SIZES="${SIZES:-1b,3b}"
STEPS="${STEPS:-35}"
WARMUP="${WARMUP:-5}"
ROWS="${ROWS:-200}"
PATHS="${PATHS:-raw_unsloth,recipe_unsloth,raw_hf,recipe_hf}"
TIMEOUT="${PER_PATH_TIMEOUT:-420}"
SEQ="${MAX_SEQ_LENGTH:-2048}"
mkdir -p "$OUT" "$WORK"
export BENCH_RESULT="$OUT/bench.jsonl"
LOG="$OUT/bench.log"

echo "== $(date -u +%FT%TZ) sizes=$SIZES steps=$STEPS warmup=$WARMUP paths=$PATHS" | tee -a "$LOG"
missing=""
for size in ${SIZES//,/ }; do [ -f "$WORK/llama-3.2-$size-random/config.json" ] || missing="$missing,$size"; done
if [ -n "$missing" ] || [ ! -f "$WORK/data/samples.json" ]; then
  sizes_to_make="${missing#,}"; [ -n "$sizes_to_make" ] || sizes_to_make="${SIZES%%,*}"
  python3 bench/gpu/prepare.py --out "$WORK" --sizes "$sizes_to_make" --rows "$ROWS" --max-seq-length "$SEQ" 2>&1 | tee -a "$LOG" || exit 1
fi

status=0
for size in ${SIZES//,/ }; do
  model="$WORK/llama-3.2-$size-random"
  for item in ${PATHS//,/ }; do
    # An item is a path, optionally with @-separated recipe overrides: recipe_unsloth@train.padding_free=true
    path="${item%%@*}"; variant=""; [ "$item" != "$path" ] && variant="${item#*@}" && variant="${variant//@/ }"
    echo "== $item $size $(date -u +%T)" | tee -a "$LOG"
    # Cold caches for every process: compiled kernels are part of its time to first step.
    cache="$WORK/cache/$item-$size"; rm -rf "$cache"
    export UNSLOTH_COMPILE_LOCATION="$cache/unsloth" TORCHINDUCTOR_CACHE_DIR="$cache/inductor" TRITON_CACHE_DIR="$cache/triton"
    export BENCH_T0="$(date +%s.%N)"
    case "$path" in
      raw_hf|raw_unsloth)
        timeout "$TIMEOUT" python3 bench/gpu/raw_loop.py --path "$path" --model "$model" --size "$size" \
          --samples "$WORK/data/samples.json" --steps "$STEPS" --warmup "$WARMUP" --max-seq-length "$SEQ" ${RAW_ARGS:-} >>"$LOG" 2>&1 ;;
      recipe_hf|recipe_unsloth)
        rm -rf "$WORK/runs/$item-$size"
        BENCH_PATH="$item" BENCH_SIZE="$size" BENCH_WARMUP="$WARMUP" timeout "$TIMEOUT" \
          python3 -m recipetune run recipes/llama32_finetome.toml "load.use=${path#recipe_}" "load.model=$model" \
          "format.dataset=$WORK/data/finetome_like.jsonl" format.cache=false "train.max_steps=$STEPS" \
          "train.warmup_steps=$WARMUP" train.gradient_accumulation_steps=1 train.per_device_train_batch_size=2 \
          "load.max_seq_length=$SEQ" 'export=[]' ${EXTRA_OVERRIDES:-} $variant --output-dir "$WORK/runs/$item-$size" >>"$LOG" 2>&1 ;;
      *) echo "unknown path $path" | tee -a "$LOG"; false ;;
    esac
    rc=$?
    if [ $rc -ne 0 ]; then
      status=1
      echo "{\"path\": \"$item\", \"size\": \"$size\", \"error\": \"exit $rc\"}" >>"$BENCH_RESULT"
      echo "!! $item $size failed with exit $rc" | tee -a "$LOG"
    fi
    tail -n 1 "$BENCH_RESULT" | cut -c1-400
  done
done
python3 bench/gpu/summarize.py "$BENCH_RESULT" | tee "$OUT/summary.md"
exit $status
