"""Parameter counts as a model has them: the same figure in the plan, the log and the report.

bitsandbytes stores a 4-bit weight packed, two values in each byte of a ``uint8`` tensor, so
``p.numel()`` of such a weight is half its parameters; summing ``numel()`` made a 1.24B-parameter
Llama-3.2-1B look like 0.76B and its LoRA share 1.48% instead of 0.90%. :func:`count_parameters`
reads a packed weight's real shape from its quantization state (peft's own
``get_nb_trainable_parameters`` does the same for a ``PeftModel`` only; this works on any model,
before or after the adapter, on both backends). :func:`planned_parameters` gives the same numbers
from a ``config.json`` before anything is loaded (``recipe validate`` / ``recipe plan``).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def parameter_count(param: Any) -> int:
    """How many values ``param`` holds, counting a packed 4-bit weight at its unpacked shape."""
    quant_state = getattr(param, "quant_state", None)
    shape = getattr(quant_state, "shape", None)
    if shape is not None:
        return int(math.prod(shape))
    if type(param).__name__ == "Params4bit":  # packed, but not quantized yet: two 4-bit values per byte
        return int(param.numel()) * 2 * int(param.element_size())
    return int(param.numel())


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters of ``model``, each counted once (tied weights are one parameter)."""
    trainable = total = 0
    for param in model.parameters():  # parameters() yields a shared (tied) tensor once
        n = parameter_count(param)
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def _projection_shapes(cfg: dict) -> dict[str, tuple[int, int]]:
    """(in, out) features of each Llama-family projection."""
    hidden = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    inter = cfg["intermediate_size"]
    return {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim), "v_proj": (hidden, kv * head_dim),
            "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
            "down_proj": (inter, hidden)}


def lora_parameters(cfg: dict, r: int, target_modules: Iterable[str] | str,
                    modules_to_save: Iterable[str] | None = None) -> int | None:
    """Trainable parameters LoRA of rank ``r`` adds to a Llama-family model, or None when a target is not one of
    its projections (then only loading the model tells)."""
    try:
        shapes = _projection_shapes(cfg)
        layers = cfg["num_hidden_layers"]
        vocab = cfg["vocab_size"]
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    targets = list(LLAMA_PROJECTIONS) if target_modules == "all-linear" else list(target_modules)
    if any(t not in shapes for t in targets):
        return None
    per_layer = sum(r * (shapes[t][0] + shapes[t][1]) for t in dict.fromkeys(targets))
    saved = 0
    for name in modules_to_save or ():
        if name not in ("embed_tokens", "lm_head"):
            return None
        saved += vocab * cfg["hidden_size"]  # a trained copy of the whole matrix
    return layers * per_layer + saved


def planned_parameters(cfg: dict, adapt_options: Any = None) -> tuple[int, int] | None:
    """(trainable, total) a run will report, from the model's ``config.json`` and the ``lora`` adapter's options
    (``None`` adapter: full fine-tuning, every parameter trains). None when the config is not Llama-like."""
    from .memory_estimate import count_parameters as config_parameters

    try:
        base = config_parameters(cfg)[0]
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    if adapt_options is None:
        return base, base
    lora = lora_parameters(cfg, adapt_options.r, adapt_options.target_modules, adapt_options.modules_to_save)
    if lora is None:
        return None
    return lora, base + lora
