#!/usr/bin/env bash
# Issue 15 on the GPU image (no llama-cpp-python there): a LoRA-only QLoRA run of the shipped seed recipe
# (random Llama-3.2-1B, unsloth backend, a few steps), then reaching the trained model afterwards:
# `recipe export RUN --to gguf` (f16 written unchecked, the report says how to check it), `--to merged`,
# `recipe generate RUN/artifacts/lora` (the adapter merged in memory), artifact permissions and the portable
# adapter_config.json.
#
#   bench/gpu/issue15_reach.sh            (repository root; OUT and BENCH_WORK as in run_all.sh)
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/bench-out}"
export SMOKE_STEPS="${SMOKE_STEPS:-3}"
bash bench/gpu/smoke_finetome.sh || { tail -40 "$OUT/smoke_finetome.log"; exit 1; }
. bench/gpu/setup_env.sh
run="${BENCH_WORK:-/tmp/bench}/runs/smoke-finetome-unsloth"
LOG="$OUT/issue15_reach.log"
{
  echo "== adapter_config.json base"; grep -E '"base_model_name_or_path"|"revision"' "$run/artifacts/lora/adapter_config.json"
  echo "== model card"; head -12 "$run/artifacts/lora/README.md"
  echo "== recipe export --to gguf (no llama-cpp-python here)"
  python3 -m recipetune export "$run" --to gguf -q f16 2>&1 | grep -v "it/s\]" | tail -8; echo "exit ${PIPESTATUS[0]}"
  echo "== recipe export --to merged"
  python3 -m recipetune export "$run" --to merged --dtype bfloat16 2>&1 | tail -3; echo "exit ${PIPESTATUS[0]}"
  echo "== recipe generate RUN/artifacts/lora"
  python3 -m recipetune generate "$run/artifacts/lora" --prompt "Say hello." --max-tokens 8 --stats 2>&1 | tail -2
  echo "== permissions (umask $(umask))"; ls -la "$run/artifacts" "$run/artifacts/lora" "$run/artifacts/merged" | head -30
  echo "== report tail"; tail -12 "$run/report.md"
} >"$LOG" 2>&1
cat "$LOG"
