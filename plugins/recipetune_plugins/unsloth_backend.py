"""Backend ``unsloth``: Unsloth's ``FastLanguageModel`` (fused kernels, 4-bit QLoRA) on an NVIDIA GPU.

Unsloth patches transformers, peft and TRL when it is imported, so it must be
imported before them: :meth:`UnslothBackend.load` does ``import unsloth`` first
thing, and nothing here imports it (or torch) at module level, so a recipe that
names this backend validates on any machine.

The ``FastLanguageModel`` class travels to the later stages in
``Loaded.extras["unsloth"]``: the ``lora`` adapter calls its ``get_peft_model``,
the ``sft`` trainer takes Unsloth's trainer path, and generation (the
``samples`` reporter) switches with ``for_inference`` / ``for_training``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from recipetune import Backend, Loaded, Options, PathOrHubId, Problem, UserError, hookimpl

from .memory_estimate import fit_problem, gpu_free_gib, recipe_estimate
from .model_sources import hf_folder_from_gguf, local_model_path

EXTRAS_KEY = "unsloth"
"""Key of ``Loaded.extras`` holding the ``FastLanguageModel`` class."""

NO_GPU = 'backend "unsloth" needs an NVIDIA GPU; load.use = "hf" runs anywhere'

FAST_LORA_OFF = ("Unsloth's fast LoRA kernels are off with {what}; training still works, more slowly "
                 "(set {fix} to keep them)")


class UnslothOptions(Options):
    model: PathOrHubId
    """Hub id (``org/name``, e.g. ``unsloth/Llama-3.2-3B-Instruct``), a local HF folder, a ``.gguf`` file, or ``pkg:<package>/<file>``."""
    revision: str | None = None
    """Hub revision (branch, tag or commit)."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Weights' dtype; ``auto`` lets Unsloth choose: bf16 on Ampere or newer GPUs, fp16 on older ones."""
    max_seq_length: int = Field(default=2048, ge=8)
    """Longest sample in tokens; longer samples are truncated. Unsloth sizes its RoPE cache for it."""
    load_in_4bit: bool = True
    """Quantize weights to 4 bits (bitsandbytes nf4): QLoRA. Set false for LoRA on 16-bit weights."""
    full_finetuning: bool = False
    """Train every weight (no adapter): needs load_in_4bit = false and no [adapt] table."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model. Off unless you trust its author."""
    token_env: str = "HF_TOKEN"
    """Name of the environment variable holding a Hub token (the token itself never goes into a recipe or log)."""

    @model_validator(mode="after")
    def _full_finetuning_is_not_4bit(self):
        if self.full_finetuning and self.load_in_4bit:
            raise ValueError("full_finetuning trains every weight and cannot train 4-bit ones; set load_in_4bit = false")
        return self


def has_nvidia_gpu() -> bool:
    """Whether torch sees an NVIDIA (CUDA, not ROCm) GPU.

    Called by ``preflight`` only, which ``recipe run`` calls before anything is
    loaded; ``recipe validate`` never imports torch. Without a driver
    (/proc/driver/nvidia, nvidia-smi) the answer is no without importing torch.
    """
    if not (os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi")):
        import sys

        if "torch" not in sys.modules:
            return False
    import torch

    return bool(torch.cuda.is_available() and getattr(torch.version, "hip", None) is None)


def unsloth_installed() -> bool:
    """Whether ``import unsloth`` would find it (without importing it)."""
    import sys

    if sys.modules.get("unsloth") is not None:
        return True
    try:
        return importlib.util.find_spec("unsloth") is not None
    except (ImportError, ValueError):
        return False


def fast_lora_off_reasons(adapt_options) -> list[tuple[str, str, str]]:
    """(recipe key, what, fix) for each LoRA option that turns Unsloth's fast LoRA kernels off."""
    o = adapt_options
    out = []
    if getattr(o, "dropout", 0.0) > 0:
        out.append(("adapt.dropout", f"dropout = {o.dropout}", "adapt.dropout = 0"))
    if getattr(o, "bias", "none") != "none":
        out.append(("adapt.bias", f'bias = "{o.bias}"', 'adapt.bias = "none"'))
    if getattr(o, "use_dora", False):
        out.append(("adapt.use_dora", "use_dora = true", "adapt.use_dora = false"))
    return out


def source_folder(model: str, logger=None) -> str:
    """What ``from_pretrained`` should read: a local folder, a Hub id, or a GGUF file converted once."""
    local = local_model_path(model)
    if local is not None and local.suffix == ".gguf":
        return str(hf_folder_from_gguf(local, logger))
    return str(local) if local is not None else model


class UnslothBackend(Backend):
    """Unsloth ``FastLanguageModel.from_pretrained``: 4-bit QLoRA with Unsloth's kernels (NVIDIA GPU)."""

    name = "unsloth"
    Options = UnslothOptions

    def check(self, recipe):
        from .adapter_folders import adapter_as_model_problem

        message = adapter_as_model_problem(self.options.model)
        if message:
            yield Problem("load.model", message)
        adapt = recipe.adapt
        if self.options.full_finetuning and adapt is not None:
            yield Problem("load.full_finetuning", f"full_finetuning trains every weight, but [adapt] uses {adapt.use!r}; "
                          "remove the [adapt] table or set load.full_finetuning = false")
        if adapt is not None and adapt.use == "lora":
            for key, what, fix in fast_lora_off_reasons(adapt.options):
                yield Problem(key, FAST_LORA_OFF.format(what=what, fix=fix), severity="warning")

    def preflight(self, recipe):
        if not has_nvidia_gpu():
            yield Problem("load.use", NO_GPU)
        if not unsloth_installed():
            yield Problem("load.use", "Unsloth is not installed: pip install 'recipetune[unsloth]' "
                          '(on an NVIDIA GPU), or set load.use = "hf"')
        est, free = self.estimate(recipe), gpu_free_gib()
        if est is not None and free is not None:
            problem = fit_problem(est, free[0], free[1])
            if problem is not None:
                yield problem

    def describe_plan(self, recipe):
        o = self.options
        weights = "4-bit nf4 (QLoRA)" if o.load_in_4bit else "16-bit"
        lines = [f"Unsloth FastLanguageModel, {weights}, dtype {o.dtype}, max_seq_length {o.max_seq_length}"
                 + (", full fine-tuning" if o.full_finetuning else "")]
        est = self.estimate(recipe)
        if est is not None:
            lines.append(est.describe() + " (estimate; recipe plan shows it by part)")
        return lines

    def estimate(self, recipe):
        """The memory estimate from the model's config.json, when it is on this machine (memory_estimate)."""
        return recipe_estimate(recipe, on_gpu=True)

    def load(self, run) -> Loaded:
        # Unsloth first: it patches transformers, peft and TRL as it is imported.
        import unsloth  # noqa: F401
        from unsloth import FastLanguageModel

        import torch

        o = self.options
        source = source_folder(o.model, run.logger)
        kwargs = dict(model_name=source, max_seq_length=o.max_seq_length,
                      dtype=None if o.dtype == "auto" else getattr(torch, o.dtype),
                      load_in_4bit=o.load_in_4bit, full_finetuning=o.full_finetuning,
                      token=os.environ.get(o.token_env) or None, trust_remote_code=o.trust_remote_code,
                      revision=o.revision)
        if run.world_size > 1:  # ddp: each process loads onto its own GPU (its local rank's), not spread over all
            kwargs["device_map"] = {"": torch.cuda.current_device()}
        try:
            model, tokenizer = FastLanguageModel.from_pretrained(**kwargs)
        except OSError as exc:
            raise UserError(f"cannot load model {o.model!r}: {exc}") from exc
        from .model_sources import faithful_tokenizer

        tokenizer, choice = faithful_tokenizer(source, tokenizer, token=kwargs["token"], revision=o.revision)
        if choice is not None:  # the folder's tokenizer.json, as the hf backend trains with it
            run.logger.info("%s", choice.describe())
        if getattr(tokenizer, "pad_token", None) is None:
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(model, "config", None) is not None:
            model.config.use_cache = False
        dtype = getattr(model, "dtype", None)
        local = local_model_path(source)
        return Loaded(model=model, tokenizer=tokenizer, backend=self.name, model_name=o.model,
                      device="cuda", dtype=str(dtype).replace("torch.", "") if dtype is not None else o.dtype,
                      max_seq_length=o.max_seq_length, quantized="4bit" if o.load_in_4bit else None,
                      source_dir=local if local is not None and Path(local).is_dir() else None,
                      extras={EXTRAS_KEY: FastLanguageModel})


def fast_language_model(loaded: Loaded):
    """The ``FastLanguageModel`` class when ``loaded`` came from the unsloth backend, else None."""
    if loaded is None or loaded.backend != UnslothBackend.name:
        return None
    return loaded.extras.get(EXTRAS_KEY)


@hookimpl
def register_backends(register):
    register(UnslothBackend)
