#!/usr/bin/env bash
# What the GPU machine has: GPU, python, the packages the benchmark needs (with .gpu-kit first on the path),
# whether `pip install -e .` works there, and whether recipetune's plugins (unsloth included) are found.
cd "$(dirname "$0")/../.."
. bench/gpu/setup_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 - <<'PY'
import importlib, sys, time
from importlib import metadata
print("python", sys.version.split()[0], sys.executable)
for name in ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "bitsandbytes", "unsloth", "unsloth_zoo",
             "tokenizers", "pydantic", "pluggy", "click", "jinja2", "matplotlib", "gguf", "llama_cpp"):
    try:
        print(f"{name:14s} {metadata.version(name.replace('_', '-') if name == 'llama_cpp' else name)}")
    except Exception as exc:
        print(f"{name:14s} MISSING ({type(exc).__name__})")
import torch
print("cuda", torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
t = time.time()
import unsloth  # noqa
print(f"import unsloth: {time.time() - t:.1f} s")
from recipetune.plugins import get_plugin_manager
from recipetune_plugins.unsloth_backend import has_nvidia_gpu
pm = get_plugin_manager()
print("backends:", sorted(e.name for e in pm.registry.entries("backend")), "has_nvidia_gpu:", has_nvidia_gpu())
PY
python3 -m recipetune validate recipes/llama32_finetome.toml >/dev/null && echo "recipe validate: ok"
if timeout 120 python3 -m pip install -q --no-deps --no-build-isolation -e . >/tmp/pip-e.log 2>&1; then
  echo "pip install --no-deps --no-build-isolation -e .: works"
else
  echo "pip install --no-deps --no-build-isolation -e .: fails ($(tail -n 1 /tmp/pip-e.log | cut -c1-200)); using the generated dist-info"
fi
