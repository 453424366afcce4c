"""Backend ``hf``: a transformers model and tokenizer, optionally 4-bit through bitsandbytes."""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

from pydantic import Field, model_validator

from recipetune import Backend, Loaded, Options, PathOrHubId, Problem, RecipePath, UserError, hookimpl

from .distributed import quant_storage_dtype
from .memory_estimate import fit_problem, recipe_estimate
from .model_sources import hf_folder_from_gguf, local_model_path
from .precision import resolve_dtype


class HFOptions(Options):
    model: PathOrHubId
    """Hub id (``org/name``), a local HF folder, a ``.gguf`` file, or ``pkg:<package>/<file>``."""
    revision: str | None = None
    """Hub revision (branch, tag or commit)."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """Weights' dtype; ``auto`` is bf16 on Ampere or newer GPUs, fp16 on older GPUs, fp32 on a CPU."""
    max_seq_length: int = Field(default=2048, ge=8)
    """Longest sample in tokens; longer samples are truncated."""
    load_in_4bit: bool = False
    """Quantize weights to 4 bits with bitsandbytes (QLoRA). Needs a CUDA GPU."""
    load_in_8bit: bool = False
    """Quantize weights to 8 bits with bitsandbytes."""
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type."""
    bnb_4bit_use_double_quant: bool = True
    """Quantize the quantization constants too (saves ~0.4 bit per weight)."""
    bnb_4bit_compute_dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """dtype of the matmuls on 4-bit weights; ``auto`` follows ``dtype``."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model. Off unless you trust its author."""
    attn_implementation: str | None = "sdpa"
    """Attention kernel (``sdpa``, ``eager``, ``flash_attention_2``)."""
    token_env: str = "HF_TOKEN"
    """Name of the environment variable holding a Hub token (the token itself never goes into a recipe or log)."""
    adapter: RecipePath | None = None
    """Continue from an earlier run's LoRA adapter: its folder (``runs/<name>/<time>/artifacts/lora``) or its run
    folder, relative to the recipe file; the ``lora`` adapter stage then keeps it (chained_adapter.py)."""

    @model_validator(mode="after")
    def _one_quantization(self):
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are exclusive")
        return self


def _has_cuda_cheaply() -> bool:
    """Whether torch would see a GPU, without importing torch (validate stays light)."""
    import sys

    if "torch" in sys.modules:
        return sys.modules["torch"].cuda.is_available()
    return os.path.exists("/proc/driver/nvidia/version")


def _available_memory_gib() -> tuple[float, str]:
    import torch

    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return free / 2**30, f"GPU {torch.cuda.get_device_name(0)}"
    try:
        with open("/proc/meminfo") as fh:
            info = dict(line.split(":", 1) for line in fh)
        return int(info["MemAvailable"].split()[0]) / 2**20, "this machine's RAM"
    except (OSError, KeyError, ValueError):
        return float("inf"), "this machine"


def size_unknown_because(model: str) -> str:
    """Why the plan cannot size the model before loading it, in the words of what ``model`` is."""
    try:
        local = local_model_path(model)
    except UserError:
        local = None
    if local is None:
        return "model size unknown until it is loaded (a Hub id: its config.json is read when the run loads it)"
    if local.is_dir():
        return f"model size unknown: no readable config.json in the local folder {local}"
    return f"model size unknown until the local file {local.name} is converted (the first run does it once)"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


class HFBackend(Backend):
    """transformers ``AutoModelForCausalLM`` + ``AutoTokenizer``; bitsandbytes for 4/8-bit."""

    name = "hf"
    Options = HFOptions

    def check(self, recipe):
        from .adapter_folders import adapter_as_model_problem

        message = adapter_as_model_problem(self.options.model)
        if message:
            yield Problem("load.model", message)
        if self.options.adapter:
            from .chained_adapter import adapter_problem

            message = adapter_problem(self.options.adapter)
            if message:
                yield Problem("load.adapter", message)

    def preflight(self, recipe):
        o = self.options
        # bitsandbytes 0.50's CPU kernels run a 4-bit forward, but LoRA weights behind them got zero
        # gradients in a full training run (measured 2026-11-25): no silent CPU fallback.
        if (o.load_in_4bit or o.load_in_8bit) and not cuda_available():
            key = "load_in_4bit" if o.load_in_4bit else "load_in_8bit"
            bits = "4-bit" if o.load_in_4bit else "8-bit"
            yield Problem(f"load.{key}", f"{bits} loading needs a CUDA GPU and this machine has none; "
                          f"set load.{key}=false to train LoRA on full-precision weights here, or run on an NVIDIA GPU")
        if (o.load_in_4bit or o.load_in_8bit) and importlib.util.find_spec("bitsandbytes") is None:
            yield Problem("load.load_in_4bit", "bitsandbytes is not installed: pip install 'recipetune[gpu]'")

        est = self.estimate(recipe)
        if est is not None:
            available, where = _available_memory_gib()
            problem = fit_problem(est, available, where)
            if problem is not None:
                yield problem

    def describe_plan(self, recipe):
        o = self.options
        quant = "4-bit nf4" if o.load_in_4bit else "8-bit" if o.load_in_8bit else "full precision"
        lines = [f"{quant}, dtype {o.dtype}, max_seq_length {o.max_seq_length}"]
        est = self.estimate(recipe)
        lines.append(est.describe() + " (estimate; recipe plan shows it by part)" if est else size_unknown_because(o.model))
        return lines

    def estimate(self, recipe):
        """The memory estimate from the model's config.json, when it is on this machine (memory_estimate)."""
        return recipe_estimate(recipe, on_gpu=_has_cuda_cheaply())

    def load(self, run) -> Loaded:
        import torch
        from transformers import AutoModelForCausalLM

        from .model_sources import load_tokenizer

        o = self.options
        source = self.source_folder(run)
        dtype = resolve_dtype(o.dtype)
        on_gpu = torch.cuda.is_available()
        kwargs = {"dtype": dtype, "trust_remote_code": o.trust_remote_code, "revision": o.revision,
                  "token": os.environ.get(o.token_env) or None}
        if o.attn_implementation:
            kwargs["attn_implementation"] = o.attn_implementation
        quantized = None
        if o.load_in_4bit or o.load_in_8bit:
            from transformers import BitsAndBytesConfig

            compute = resolve_dtype(o.bnb_4bit_compute_dtype) if o.bnb_4bit_compute_dtype != "auto" else dtype
            storage = quant_storage_dtype(run, compute)  # FSDP / ZeRO-3: 4-bit weights stored so they shard
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=o.load_in_4bit, load_in_8bit=o.load_in_8bit,
                bnb_4bit_quant_type=o.bnb_4bit_quant_type, bnb_4bit_use_double_quant=o.bnb_4bit_use_double_quant,
                bnb_4bit_compute_dtype=compute, **({"bnb_4bit_quant_storage": storage} if storage is not None else {}))
            quantized = "4bit" if o.load_in_4bit else "8bit"
        if on_gpu:
            kwargs["device_map"] = {"": torch.cuda.current_device()}
        try:
            # the folder's tokenizer.json where transformers would rebuild it differently (LlamaTokenizer)
            tokenizer, choice = load_tokenizer(source, trust_remote_code=o.trust_remote_code, revision=o.revision,
                                               token=kwargs["token"])
            model = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True, **kwargs)
        except OSError as exc:
            raise UserError(f"cannot load model {o.model!r}: {exc}") from exc
        if choice is not None:
            run.logger.info("%s", choice.describe())
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.config.use_cache = False
        extras = {"tokenizer_choice": choice} if choice is not None else {}
        if o.adapter:  # an earlier run's adapter, trained further (chained_adapter.py)
            from .chained_adapter import attach

            model, extras["adapter_from"] = attach(run, model, o.adapter, quantized is not None)
        local = local_model_path(source)
        return Loaded(model=model, tokenizer=tokenizer, backend=self.name, model_name=o.model,
                      device="cuda" if on_gpu else "cpu", dtype=str(dtype).replace("torch.", ""),
                      max_seq_length=o.max_seq_length, quantized=quantized,
                      source_dir=local if local is not None and local.is_dir() else None,
                      extras=extras)

    def source_folder(self, run) -> str:
        """The folder or Hub id transformers should read (GGUF sources converted once)."""
        local = local_model_path(self.options.model)
        if local is not None and local.suffix == ".gguf":
            return str(hf_folder_from_gguf(local, run.logger))
        return str(local) if local is not None else self.options.model


@hookimpl
def register_backends(register):
    register(HFBackend)
