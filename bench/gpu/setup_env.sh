#!/usr/bin/env bash
# Source this on the GPU machine (from the repository root):  . bench/gpu/setup_env.sh
#
# That machine has python3 with torch, transformers, peft and accelerate, but no network and no
# unsloth/trl/bitsandbytes/datasets: those come from .gpu-kit (carried, gitignored), put first on
# PYTHONPATH. recipetune itself is imported from framework/ and plugins/; its plugins are found
# through entry points, so instead of `pip install -e .` (which needs hatchling, absent there) this
# writes two small .dist-info folders under $BENCH_SITE: recipetune's entry points, read from
# pyproject.toml, and the benchmark's probe plugin (bench/gpu/probe_plugin.py). `recipe` is then
# `python3 -m recipetune`.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export BENCH_SITE="${BENCH_SITE:-/tmp/recipetune-site}"
mkdir -p "$BENCH_SITE"
python3 - "$ROOT" "$BENCH_SITE" <<'PY'
import sys, tomllib
from pathlib import Path
root, site = Path(sys.argv[1]), Path(sys.argv[2])
project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
def dist(name, version, groups):
    d = site / f"{name}-{version}.dist-info"
    d.mkdir(parents=True, exist_ok=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    text = "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items())
    (d / "entry_points.txt").write_text(text)
groups = dict(project.get("entry-points", {}))
groups["console_scripts"] = project.get("scripts", {})
dist("recipetune", project["version"], groups)
dist("recipetune_bench", "0.0.0", {"recipetune": {"bench_probe": "probe_plugin"}})
PY
KIT="$ROOT/.gpu-kit:"; [ -n "${BENCH_NO_KIT:-}" ] && KIT=""   # BENCH_NO_KIT=1: a CPU dry run with the venv's packages
export PYTHONPATH="$KIT$BENCH_SITE:$ROOT/framework:$ROOT/plugins:$ROOT/bench/gpu${PYTHONPATH:+:$PYTHONPATH}"
# Offline: nothing may try the Hub; Unsloth's usage statistics off; its compiled kernels out of the tree.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1
export UNSLOTH_COMPILE_LOCATION="${UNSLOTH_COMPILE_LOCATION:-/tmp/unsloth_compiled_cache}"
export RECIPETUNE_CACHE="${RECIPETUNE_CACHE:-/tmp/recipetune-cache}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
