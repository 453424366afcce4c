"""A finished run folder read back: its recipe, its artifacts, and the trained model rebuilt from them.

``recipe export`` uses it to write GGUF, merged or LoRA files from a run that trained and kept only its
adapter, and to check GGUF files written unchecked. The model is rebuilt from what the run kept, most
faithful first: the LoRA adapter on its base model (the base reloaded at full precision, as the merged and
GGUF exporters do within a run), else the merged weights, else (a recipe that did not train) the base model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipetune import Loaded, UserError
from recipetune.atomic import write_json


@dataclass
class FinishedRun:
    folder: Path
    resolved: dict[str, Any]
    artifacts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def recipe_data(self) -> dict[str, Any]:
        return self.resolved.get("recipe") or {}

    def artifact_paths(self, kind: str) -> list[Path]:
        return [Path(a["path"]) for a in self.artifacts if a.get("kind") == kind and Path(a["path"]).exists()]

    def adapter_dir(self) -> Path | None:
        from .adapter_folders import is_adapter_folder

        found = [p for p in self.artifact_paths("lora") if is_adapter_folder(p)]
        default = self.folder / "artifacts" / "lora"
        return found[0] if found else default if is_adapter_folder(default) else None

    def record(self, new: list[Any]) -> None:
        """Add artifacts (``recipetune.Artifact``) to ``resolved.json``, replacing entries with the same path."""
        paths = {str(a.path) for a in new}
        kept = [a for a in self.artifacts if a.get("path") not in paths]
        self.artifacts = kept + [{"kind": a.kind, "path": str(a.path), **a.details} for a in new]
        write_json(self.folder / "resolved.json", {**self.resolved, "artifacts": self.artifacts})


def open_run(folder: str | Path) -> FinishedRun:
    folder = Path(folder).expanduser().resolve()
    try:
        resolved = json.loads((folder / "resolved.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{folder}: not a run folder (no resolved.json); give the folder `recipe run` wrote") from None
    except ValueError as exc:
        raise UserError(f"{folder}/resolved.json is not JSON: {exc}") from None
    return FinishedRun(folder, resolved, list(resolved.get("artifacts") or []))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def _table(header: str, values: dict[str, Any]) -> list[str]:
    return [header, *[f"{json.dumps(k)} = {_toml_value(v)}" for k, v in values.items() if v is not None], ""]


def export_recipe_text(done: FinishedRun, exports: list[dict[str, Any]]) -> str:
    """A recipe that loads the run's base model and writes ``exports``: its load table, as the run resolved it."""
    data = done.recipe_data
    lines = [f"name = {json.dumps(data.get('name', done.folder.name))}", f"seed = {int(data.get('seed', 3407))}", ""]
    lines += _table("[load]", data.get("load") or {})
    for export in exports:
        lines += _table("[[export]]", export)
    return "\n".join(lines)


def original_recipe(done: FinishedRun, pm):
    """The run's own recipe (for names, data and the model card), or None when it no longer validates here
    (a dataset or model file moved)."""
    from recipetune import RecipeError
    from recipetune.recipe import load_recipe_text

    source = done.resolved.get("source")
    recipe_dir = Path(source).parent if source else done.folder
    try:
        text = (done.folder / "recipe.toml").read_text(encoding="utf-8")
        return load_recipe_text(text, file=str(done.folder / "recipe.toml"), recipe_dir=recipe_dir,
                                overrides=list(done.resolved.get("overrides") or []), pm=pm)
    except (OSError, RecipeError):
        return None


def rebuild_model(done: FinishedRun, logger: Any = None) -> Loaded:
    """The trained model of ``done`` as the exporters take it (see the module docstring for the order)."""
    from .adapter_folders import base_source, load_with_adapter

    load = done.recipe_data.get("load") or {}
    max_len = int(load.get("max_seq_length") or 2048)
    adapter = done.adapter_dir()
    if adapter is not None:
        model, tokenizer, source = load_with_adapter(adapter, "float32", merge=False, logger=logger)
        local = Path(source)
        return Loaded(model=model, tokenizer=tokenizer, backend="hf", model_name=str(load.get("model") or source),
                      max_seq_length=max_len, adapter="lora", source_dir=local if local.is_dir() else None)
    merged = done.artifact_paths("merged")
    trained = done.recipe_data.get("train") is not None
    if merged or not trained:
        import torch
        from transformers import AutoModelForCausalLM

        from .model_sources import load_tokenizer

        source = str(merged[0]) if merged else base_source(str(load.get("model")), logger)
        tokenizer = load_tokenizer(source)[0]  # a LlamaTokenizer folder as trained: its tokenizer.json
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, use_safetensors=True)
        return Loaded(model=model, tokenizer=tokenizer, backend="hf", model_name=source, max_seq_length=max_len,
                      source_dir=Path(source) if Path(source).is_dir() else None)
    raise UserError(f"{done.folder}: the run kept neither its LoRA adapter nor merged weights, so there is no "
                    'trained model to export; add [[export]] use = "lora" to the recipe and train again')
