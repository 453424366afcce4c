#!/usr/bin/env bash
# GPU smoke of the shipped recipe, recipes/llama32_finetome.toml (load.use = "unsloth"), offline:
# a random-initialised Llama-3.2-1B architecture and generated FineTome-shaped conversations given as
# overrides, a few optimizer steps (gradient accumulation 4 as shipped), the samples reporter added
# (Unsloth's for_inference / for_training around generation), and the LoRA export only (the GGUF
# export needs llama.cpp, which the GPU machine lacks).
#
#   bench/gpu/smoke_finetome.sh            (repository root; OUT and BENCH_WORK as in run_all.sh)
set -uo pipefail
cd "$(dirname "$0")/../.."
. bench/gpu/setup_env.sh
OUT="${OUT:-/tmp/bench-out}"
WORK="${BENCH_WORK:-/tmp/bench}"
STEPS="${SMOKE_STEPS:-5}"
BACKEND="${SMOKE_BACKEND:-unsloth}"
mkdir -p "$OUT" "$WORK/data"
LOG="$OUT/smoke_finetome.log"
model="$WORK/llama-3.2-1b-random"
[ -f "$model/config.json" ] || python3 bench/gpu/prepare.py --out "$WORK" --sizes 1b --rows 200 >>"$LOG" 2>&1 || exit 1
python3 -c "
import sys; sys.path.insert(0, 'bench/gpu')
from pathlib import Path
from common import finetome_rows, write_jsonl
write_jsonl(Path('$WORK/data/finetome_smoke.jsonl'), finetome_rows(96, seed=7, answer_words=(20, 600)))
"
run="$WORK/runs/smoke-finetome-$BACKEND"
rm -rf "$run"
python3 -m recipetune run recipes/llama32_finetome.toml "load.use=$BACKEND" "load.model=$model" \
  "format.dataset=$WORK/data/finetome_smoke.jsonl" "train.max_steps=$STEPS" \
  'export=[{use = "lora"}]' \
  'report=[{use = "memory"}, {use = "samples", prompts = [{prompt = "Say hello.", expect = "hello"}], max_new_tokens = 8}]' \
  --output-dir "$run" >>"$LOG" 2>&1
rc=$?
echo "smoke_finetome ($BACKEND): exit $rc" | tee -a "$LOG"
[ -f "$run/report.md" ] && cp "$run/report.md" "$OUT/smoke_report_$BACKEND.md"
[ -f "$run/metrics.jsonl" ] && head -c 3000 "$run/metrics.jsonl" | tee -a "$LOG" >/dev/null
ls -la "$run/artifacts/lora" >>"$LOG" 2>&1
[ -f "$run/artifacts/lora/adapter_model.safetensors" ] || { echo "no adapter written" | tee -a "$LOG"; rc=1; }
exit $rc
