#!/usr/bin/env bash
# GPU smoke of recipes/qlora_lmsys_rouge.toml as shipped -- nf4 with double quantization and bf16 compute,
# trust_remote_code, LoRA r=32 on gate/up/down, the English filter and system prompt, 70/15/15, paged_adamw_8bit,
# reduce_lr_on_plateau, max_grad_norm 0.3, keep = "best" with early stopping, the merged bf16 export and the rouge
# reporter (batched greedy generation on the GPU) -- offline: a small random-initialised Llama-3.2-shaped model
# (4 layers, the bench tokenizer of bench/gpu/common.py) and generated lmsys-shaped rows (a "conversation" column and a "language" column, one
# German row in five; every English answer is the same sentence, so ROUGE must rise) given as overrides.
#
#   bench/gpu/smoke_lmsys_rouge.sh    (repository root, GPU machine; carry .gpu-kit and .rouge-kit: rouge-score
#                                      and nltk wheels unpacked, see docs/evaluation-and-sweeps.md)
# Writes $OUT/smoke_lmsys_rouge.log and the run's report.md, metrics.jsonl, rouge.json and best.json into $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
. bench/gpu/setup_env.sh
export PYTHONPATH="$PWD/.rouge-kit:$PYTHONPATH"
OUT="${OUT:-/tmp/bench-out}"
WORK="${BENCH_WORK:-/tmp/bench}"
STEPS="${SMOKE_STEPS:-40}"
mkdir -p "$OUT" "$WORK/data"
LOG="$OUT/smoke_lmsys_rouge.log"
model="$WORK/llama-small-random"
python3 - "$model" "$WORK/data/lmsys_smoke.jsonl" >>"$LOG" 2>&1 <<'PY' || exit 1
import json, sys
from pathlib import Path
sys.path.insert(0, "bench/gpu")
model, data = Path(sys.argv[1]), Path(sys.argv[2])
if not (model / "config.json").exists():  # a small Llama-3.2-shaped model (4 layers) with the bench tokenizer
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from common import make_tokenizer
    tok = make_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=4096, num_hidden_layers=4,
                      num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=4096,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    net = LlamaForCausalLM(cfg).to(torch.bfloat16)
    net.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                             pad_token_id=tok.pad_token_id)
    net.save_pretrained(model)
    tok.save_pretrained(model)
with data.open("w") as fh:
    for i in range(1000):
        english = i % 5 != 4
        conv = [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
                {"role": "assistant", "content": "Quill says hello to you." if english else f"Das ist {2 * i}."}]
        fh.write(json.dumps({"conversation": conv, "language": "English" if english else "German"}) + "\n")
PY
run="$WORK/runs/smoke-lmsys-rouge"
rm -rf "$run"
start=$(date +%s)
python3 -m recipetune run recipes/qlora_lmsys_rouge.toml "load.model=$model" "format.dataset=$WORK/data/lmsys_smoke.jsonl" \
  format.chat_template=llama-3.1 "train.max_steps=$STEPS" train.eval_steps=10 train.save_steps=10 \
  train.learning_rate=1e-3 train.logging_steps=5 'report[1].max_samples=64' 'report[1].max_new_tokens=16' \
  --output-dir "$run" >>"$LOG" 2>&1
code=$?
echo "exit $code after $(( $(date +%s) - start )) s" | tee -a "$LOG"
for f in report.md metrics.jsonl rouge.json best/best.json; do [ -f "$run/$f" ] && cp "$run/$f" "$OUT/$(basename $f)"; done
exit $code
