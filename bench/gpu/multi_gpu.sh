#!/usr/bin/env bash
# recipetune on 1 and 2 GPUs (issue 14), one job on an nvidia-h200-x2 machine:
#   bench/gpu/multi_gpu.sh                 # 3B and 8B, QLoRA and bf16 LoRA, 1 GPU / ddp / fsdp (/ deepspeed)
# Settings (environment): SIZES (3b,8b), MODES (qlora,lora16), PATHS (1gpu,ddp,fsdp,deepspeed), STEPS (30),
# WARMUP (5), ROWS (2000), WORK (/tmp/mgpu), OUT (/tmp/mgpu-out), PER_PATH_TIMEOUT (900).
# Results: $OUT/multi_gpu.jsonl (one line per path), $OUT/summary.md, $OUT/losses_1_vs_2_gpus.png, $OUT/runs.log.
set -uo pipefail
cd "$(dirname "$0")/../.."
# NVLink multicast off in NCCL, PyTorch and NVSHMEM, here and in every process started from here
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
. bench/gpu/setup_env.sh
# the probe plugin, found through an entry point like any plugin
mkdir -p "$BENCH_SITE/recipetune_mgpu-0.0.0.dist-info"
printf 'Metadata-Version: 2.1\nName: recipetune_mgpu\nVersion: 0.0.0\n' > "$BENCH_SITE/recipetune_mgpu-0.0.0.dist-info/METADATA"
printf '[recipetune]\nmgpu_probe = multi_gpu_probe\n' > "$BENCH_SITE/recipetune_mgpu-0.0.0.dist-info/entry_points.txt"
WORK="${WORK:-/tmp/mgpu}" OUT="${OUT:-/tmp/mgpu-out}" SIZES="${SIZES:-3b,8b}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=index,name,memory.total --format=csv | tee "$OUT/gpus.csv"
python3 -c 'import torch; print("cuda devices:", torch.cuda.device_count())'
python3 bench/gpu/multi_gpu.py prepare --work "$WORK" --sizes "$SIZES" --rows "${ROWS:-2000}" || exit 1
python3 bench/gpu/multi_gpu.py run --work "$WORK" --out "$OUT" --sizes "$SIZES" --modes "${MODES:-qlora,lora16}" \
  --paths "${PATHS:-1gpu,ddp,fsdp,deepspeed}" --steps "${STEPS:-30}" --warmup "${WARMUP:-5}" \
  --timeout "${PER_PATH_TIMEOUT:-900}"
status=$?
python3 bench/gpu/multi_gpu.py summarize --out "$OUT"
exit $status
