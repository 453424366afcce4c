"""A LoRA adapter folder on disk (``artifacts/lora``): what base model it needs, and the model it makes.

``recipe generate``/``recipe chat`` take such a folder (the base model is loaded and the adapter merged in
memory), ``recipe export`` writes GGUF or merged files from it, and a recipe that names one as ``load.model``
is told at validate time to use ``recipe export`` instead (a backend loads base models, not adapters).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recipetune import UserError

ADAPTER_CONFIG = "adapter_config.json"


def is_adapter_folder(path: str | Path) -> bool:
    """A folder holding a peft adapter and no full model of its own."""
    path = Path(path)
    return path.is_dir() and (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def base_of(adapter_dir: str | Path) -> tuple[str, str | None]:
    """(base model, revision) that ``adapter_config.json`` names."""
    try:
        config = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{adapter_dir}: cannot read {ADAPTER_CONFIG}: {exc}") from None
    base = config.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{adapter_dir}/{ADAPTER_CONFIG} names no base model (base_model_name_or_path)")
    return str(base), config.get("revision")


def base_source(model: str, logger: Any = None) -> str:
    """What ``from_pretrained`` reads for a base-model reference: a local folder, a Hub id, or the folder a GGUF
    (or ``pkg:`` file) was converted to once."""
    from .model_sources import hf_folder_from_gguf, local_model_path

    local = local_model_path(model)
    if local is not None and local.suffix == ".gguf":
        return str(hf_folder_from_gguf(local, logger))
    if local is not None and not local.exists():
        raise UserError(f"the base model {model} is not on this machine")
    return str(local) if local is not None else model


def load_with_adapter(adapter_dir: str | Path, dtype: str = "float32", merge: bool = True,
                      base: str | None = None, revision: str | None = None, logger: Any = None):
    """(model, tokenizer, base source): the base model with the adapter applied (merged when ``merge``).

    The tokenizer is the adapter folder's own (its chat template and any tokens the template added)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir = Path(adapter_dir)
    named, named_revision = base_of(adapter_dir)
    base = base or named
    revision = revision if base != named else (revision or named_revision)
    source = base_source(base, logger)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype), revision=revision,
                                                     use_safetensors=True)
    except OSError as exc:
        raise UserError(f"cannot load the base model {base!r} of the adapter in {adapter_dir}: {exc}") from exc
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):  # the chat template added tokens
        model.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(model, str(adapter_dir), torch_device="cpu")
    if merge:
        model = model.merge_and_unload()
    return model, tokenizer, source


def adapter_as_model_problem(model: str) -> str | None:
    """The validate-time message for ``load.model`` naming an adapter folder (a backend needs a full model)."""
    path = Path(model)
    if not is_adapter_folder(path):
        return None
    run_dir = path.parent.parent if path.parent.name == "artifacts" else None
    run_hint = str(run_dir) if run_dir is not None and (run_dir / "resolved.json").exists() else "RUN_FOLDER"
    try:
        base, _ = base_of(path)
    except UserError:
        base = "its base model"
    return (f"{model} is a LoRA adapter folder (for {base}), not a model a backend loads; export the run's model "
            f"with: recipe export {run_hint} --to gguf (or --to merged), or chat with it: recipe chat {model}")
