"""Exporters ``lora`` (adapter folder + tokenizer) and ``merged`` (merged safetensors + tokenizer)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from recipetune import Artifact, Exporter, Options, Problem, hookimpl
from recipetune.atomic import atomic_dir


class LoraExportOptions(Options):
    folder: str = "lora"
    """Folder name under the run's artifacts/."""


class LoraExporter(Exporter):
    """The LoRA adapter (peft format, safetensors) and the tokenizer with its chat template."""

    name = "lora"
    Options = LoraExportOptions

    def check(self, recipe):
        if recipe.adapt is None:
            index = next(i for i, s in enumerate(recipe.export) if s.component is self)
            yield Problem(f"export[{index}].use", "the lora exporter writes an adapter, and this recipe has no [adapt] "
                          'table; add one, or export the whole model with use = "merged" or "gguf"')

    def export(self, run, loaded, result):
        if loaded.adapter is None:
            raise ValueError("there is no adapter to export (no [adapt] table); use the merged exporter")
        from .model_card import base_model_reference, portable_adapter_config, write_model_card

        target = run.artifacts_dir / self.options.folder
        base, revision = base_model_reference(run)
        with atomic_dir(target) as tmp:
            # peft_save: {"save_embedding_layers": False} when only the rows of new tokens are trained (token_rows)
            loaded.model.save_pretrained(tmp, safe_serialization=True, **loaded.extras.get("peft_save", {}))
            loaded.tokenizer.save_pretrained(tmp)
            portable_adapter_config(tmp, base, revision)  # the recipe's model id, not this machine's cache path
            write_model_card(run, result, "lora", tmp, target)
        return [Artifact("lora", target, f"LoRA adapter for {base}", {"base_model": base, "revision": revision})]


class MergedOptions(Options):
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    """dtype of the merged weights."""
    folder: str = "merged"
    """Folder name under the run's artifacts/."""


def merged_model(loaded, dtype_name: str):
    """A plain transformers model with the adapter merged in, at ``dtype_name``.

    A LoRA model trained on 4-bit weights is merged into the base weights
    reloaded at full precision (not the rounded 4-bit ones).
    """
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, dtype_name)
    model = loaded.model
    if loaded.adapter is None:
        return model.to(dtype)
    from peft import PeftModel

    source = str(loaded.source_dir) if loaded.source_dir else loaded.model_name
    base = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True)
    if base.get_input_embeddings().weight.shape[0] != len(loaded.tokenizer):
        base.resize_token_embeddings(len(loaded.tokenizer))
    with tempfile.TemporaryDirectory() as adapter_dir:
        model.save_pretrained(adapter_dir, safe_serialization=True)
        merged = PeftModel.from_pretrained(base, adapter_dir, torch_device="cpu").merge_and_unload()
    merged.generation_config = model.generation_config
    merged.config.use_cache = True
    return merged


class MergedExporter(Exporter):
    """Base weights with the adapter merged in: a folder AutoModelForCausalLM loads."""

    name = "merged"
    Options = MergedOptions

    def export(self, run, loaded, result):
        merged = merged_model(loaded, self.options.dtype)
        target = run.artifacts_dir / self.options.folder
        from .model_card import write_model_card

        with atomic_dir(target) as tmp:
            merged.save_pretrained(tmp, safe_serialization=True)
            loaded.tokenizer.save_pretrained(tmp)
            write_model_card(run, result, "merged", tmp, target)
        size = sum(f.stat().st_size for f in Path(target).rglob("*.safetensors"))
        return [Artifact("merged", target, f"merged {self.options.dtype} weights ({size / 2**20:.1f} MiB)",
                         {"dtype": self.options.dtype, "bytes": size})]


@hookimpl
def register_exporters(register):
    register(LoraExporter)
    register(MergedExporter)
