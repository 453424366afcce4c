#!/usr/bin/env bash
# GPU check of proven resume and the guards on the shipped seed recipe (recipes/llama32_finetome.toml, load.use =
# unsloth by default, 4-bit QLoRA on a random-initialised Llama-3.2-1B), offline:
#   1. two uninterrupted runs of STEPS steps, checkpoints every 4 steps, TensorBoard reporter (how far two runs
#      differ on this GPU with nothing interrupted: the noise floor);
#   2. the same run killed with SIGKILL in the middle of writing checkpoint-8 (RECIPETUNE_FAULT), then the same
#      command again: it must resume from checkpoint-4 and end with the same metrics lines and adapter;
#   3. a real CUDA out-of-memory error: another process takes nearly all GPU memory once training starts (after the
#      plan's fit check passed); the run must end with the guard's message, not a traceback.
# Writes $OUT/resume_guards.log and $OUT/resume_guards.json (max |delta| of adapter tensors, metric lines equal).
#
#   bench/gpu/resume_guards.sh            (repository root, GPU machine, .gpu-kit carried; OUT, BENCH_WORK as in run_all.sh)
set -uo pipefail
cd "$(dirname "$0")/../.."
. bench/gpu/setup_env.sh
OUT="${OUT:-/tmp/bench-out}"
WORK="${BENCH_WORK:-/tmp/bench}"
STEPS="${RESUME_STEPS:-12}"
BACKEND="${RESUME_BACKEND:-unsloth}"
mkdir -p "$OUT" "$WORK/data"
LOG="$OUT/resume_guards.log"
model="$WORK/llama-3.2-1b-random"
[ -f "$model/config.json" ] || python3 bench/gpu/prepare.py --out "$WORK" --sizes 1b --rows 200 >>"$LOG" 2>&1 || exit 1
python3 -c "
import sys; sys.path.insert(0, 'bench/gpu')
from pathlib import Path
from common import finetome_rows, write_jsonl
write_jsonl(Path('$WORK/data/finetome_resume.jsonl'), finetome_rows(160, seed=11, answer_words=(20, 400)))
"
args=(recipes/llama32_finetome.toml "load.use=$BACKEND" "load.model=$model" "format.dataset=$WORK/data/finetome_resume.jsonl"
      "train.max_steps=$STEPS" "train.save_steps=4" "train.save_total_limit=2" 'export=[{use = "lora"}]'
      'report=[{use = "tensorboard"}]')
ref="$WORK/runs/resume-ref-$BACKEND"; ref2="$WORK/runs/resume-ref2-$BACKEND"; killed="$WORK/runs/resume-killed-$BACKEND"
oom="$WORK/runs/oom-$BACKEND"
rm -rf "$ref" "$ref2" "$killed" "$oom"
echo "== uninterrupted" >>"$LOG"
python3 -m recipetune run "${args[@]}" --output-dir "$ref" >>"$LOG" 2>&1; echo "uninterrupted: exit $?" | tee -a "$LOG"
python3 -m recipetune run "${args[@]}" --output-dir "$ref2" >>"$LOG" 2>&1; echo "uninterrupted again: exit $?" | tee -a "$LOG"
echo "== killed while writing checkpoint-8" >>"$LOG"
RECIPETUNE_FAULT=checkpoint-write:8:kill python3 -m recipetune run "${args[@]}" --output-dir "$killed" >>"$LOG" 2>&1
echo "killed: exit $? (137 = SIGKILL)" | tee -a "$LOG"
echo "== the same command again" >>"$LOG"
python3 -m recipetune run "${args[@]}" --output-dir "$killed" >>"$LOG" 2>&1; echo "resumed: exit $?" | tee -a "$LOG"
grep -E "resuming|incomplete" "$LOG" | tee -a "$OUT/resume_guards.summary"
python3 - "$ref" "$killed" "$ref2" "$OUT/resume_guards.json" <<'PY' | tee -a "$LOG"
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_file
ref, killed, ref2, out = map(Path, sys.argv[1:])
machine = {"time", "tokens_per_second", "memory_reserved_gib", "memory_peak_allocated_gib", "host_rss_gib",
           "train_runtime", "train_samples_per_second", "train_steps_per_second"}
def lines(run):
    return [{k: v for k, v in json.loads(l).items() if k not in machine} for l in (run / "metrics.jsonl").read_text().splitlines()]
def compare(x, y):
    a = load_file(x / "artifacts/lora/adapter_model.safetensors"); b = load_file(y / "artifacts/lora/adapter_model.safetensors")
    la, lb = lines(x), lines(y)
    return {"adapter_equal": all(torch.equal(a[k], b[k]) for k in a),
            "adapter_max_abs_delta": max((a[k].float() - b[k].float()).abs().max().item() for k in a),
            "metric_lines": [len(la), len(lb)], "metric_lines_equal": la == lb,
            "steps_equal": [r["step"] for r in la] == [r["step"] for r in lb],
            "loss_max_abs_delta": max((abs(p.get("loss", 0) - q.get("loss", 0)) for p, q in zip(la, lb)), default=0.0),
            "first_difference": next(([p, q] for p, q in zip(la, lb) if p != q), None)}
tps = [json.loads(l).get("tokens_per_second") for l in (killed / "metrics.jsonl").read_text().splitlines()]
result = {"resumed_vs_uninterrupted": compare(ref, killed), "uninterrupted_vs_uninterrupted": compare(ref, ref2),
          "tokens_per_second_resumed_run": [t for t in tps if t is not None],
          "gpu_memory_fields": sorted(k for k in json.loads((killed / "metrics.jsonl").read_text().splitlines()[0]) if "memory" in k),
          "tensorboard_files": sorted(p.name for p in (killed / "tensorboard").iterdir())}
out.write_text(json.dumps(result, indent=2, default=str))
print(json.dumps(result, indent=2, default=str))
PY
echo "== out of memory: another process takes the GPU's memory once training starts" >>"$LOG"
python3 -m recipetune run "${args[@]}" "train.per_device_train_batch_size=16" "train.gradient_accumulation_steps=1" \
  "train.max_steps=4" "train.warmup_steps=0" --output-dir "$oom" > "$OUT/oom.log" 2>&1 &
run_pid=$!
python3 - "$OUT/oom.log" <<'PY' &
import sys, time, torch
log = sys.argv[1]
while "stage train: started" not in open(log, errors="replace").read():
    time.sleep(0.2)
free, total = torch.cuda.mem_get_info()
hog = torch.empty(free - 512 * 2**20, dtype=torch.uint8, device="cuda")  # all but 0.5 GiB
print(f"memory hog: took {hog.numel() / 2**30:.1f} of {total / 2**30:.1f} GiB", flush=True)
time.sleep(600)
PY
hog_pid=$!
wait $run_pid; echo "oom: exit $?" | tee -a "$LOG"
kill $hog_pid 2>/dev/null
grep -E "^error:|Traceback" "$OUT/oom.log" | tee -a "$LOG"
exit 0
