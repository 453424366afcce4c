"""Trainable-parameter counts of 4-bit QLoRA on both backends, against peft's own count and the plan's.

Issue 15 item 1: the log said 11,272,192 of 760,547,328 (1.48%) where Unsloth's banner said of
1,247,086,592 (0.90%), packed 4-bit weights counted as one value per byte. This loads the seed recipe
(random-initialised Llama-3.2-1B, QLoRA r=16 on the seven projections) through recipetune's own load and
adapt stages on the unsloth and the hf backend and writes what each count says.

    . bench/gpu/setup_env.sh && python3 bench/gpu/param_counts.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import make_model

ROOT = Path(__file__).resolve().parents[2]


def counts(backend: str, model_dir: Path, work: Path) -> dict:
    import torch

    from recipetune import load_recipe
    from recipetune.plugins import get_plugin_manager
    from recipetune.runner import prepare_run
    from recipetune_plugins.lora import planned_share
    from recipetune_plugins.parameters import count_parameters

    pm = get_plugin_manager()
    recipe = load_recipe(ROOT / "recipes" / "llama32_finetome.toml",
                         [f"load.use={backend}", f"load.model={model_dir}", "load.load_in_4bit=true"], pm=pm)
    run = prepare_run(recipe, pm, work / backend)
    loaded = recipe.load.component.load(run)
    loaded = recipe.adapt.component.adapt(run, loaded)
    peft_trainable, peft_total = loaded.model.get_nb_trainable_parameters()
    packed = sum(p.numel() for p in loaded.model.parameters())
    out = {"backend": backend, "logged": list(run.state["trainable_parameters"]), "recount": list(count_parameters(loaded.model)),
           "peft": [peft_trainable, peft_total], "numel_sum_packed": packed, "plan": planned_share(recipe)}
    del loaded
    torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    work = Path("/tmp/param-counts")
    model_dir = make_model(work / "llama-3.2-1b", "1b")
    results = [counts(backend, model_dir, work) for backend in ("unsloth", "hf")]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "param_counts.json").write_text(json.dumps(results, indent=2))
    json.dump(results, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
