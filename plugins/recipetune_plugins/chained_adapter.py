"""``load.adapter``: start from the LoRA adapter of an earlier run (SFT, then DPO/ORPO/KTO).

The value is an adapter folder (``runs/quickstart/<time>/artifacts/lora``) or a run folder (its LoRA artifact is
used). The hf backend loads the base model as usual, then the adapter on it, trainable: the ``lora`` adapter stage
keeps it (its own ``r``/``alpha``/``target_modules`` are the earlier run's), the trainer trains it further and the
exports write the base + this adapter, so ``artifacts/lora`` of the new run loads on the same base model as the
earlier one. ``Loaded.extras["adapter_from"]`` says where it came from. The preference trainers' reference is a frozen copy
of this adapter (TRL adds it), so DPO after SFT is measured against the SFT model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recipetune import UserError


def find_adapter(value: str | Path) -> Path:
    """The adapter folder that ``value`` names: an adapter folder, or a run folder holding one."""
    from .adapter_folders import is_adapter_folder

    path = Path(value).expanduser()
    if is_adapter_folder(path):
        return path
    if (path / "resolved.json").exists():
        from .finished_run import open_run

        found = open_run(path).adapter_dir()
        if found is not None:
            return found
        raise UserError(f"load.adapter: the run folder {path} kept no LoRA adapter (its recipe had no "
                        '[[export]] use = "lora"); name an adapter folder')
    raise UserError(f"load.adapter: {path} is neither a LoRA adapter folder (adapter_config.json) nor a run folder "
                    "(resolved.json); give e.g. runs/<name>/<time>/artifacts/lora or runs/<name>/<time>")


def adapter_problem(value: str | Path) -> str | None:
    """The validate-time message for a ``load.adapter`` that names no adapter, else ``None``."""
    try:
        find_adapter(value)
    except UserError as exc:
        return str(exc).removeprefix("load.adapter: ")
    return None


def attach(run: Any, model: Any, value: str | Path, quantized: bool = False) -> Any:
    """The model with the adapter loaded on it, trainable (a peft ``PeftModel``)."""
    from peft import PeftModel

    folder = find_adapter(value)
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    try:
        model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    except (ValueError, RuntimeError, OSError) as exc:
        raise UserError(f"load.adapter {folder}: cannot load it on {run.recipe.load.options.model}: {exc} "
                        "(it must come from a run on the same base model)") from exc
    run.logger.info("load.adapter: continuing from the adapter in %s", folder)
    return model, folder
