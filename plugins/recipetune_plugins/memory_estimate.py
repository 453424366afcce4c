"""GPU memory of a run by part, from a model's config.json and the recipe, before anything is loaded.

Parts (GiB): the frozen weights at their precision (4-bit nf4 with double quantization is 0.516 bytes
per linear weight; embeddings, norms and an untied head stay in 16 bit), the trainable parameters with
their gradients and optimizer state (AdamW 8 bytes, 8-bit AdamW 2, Adafactor ~0), activations under
the chosen checkpointing, the logits and loss, and the CUDA caching allocator's reserve on top of what
is allocated. The activation, logits and reserve coefficients are measured, not derived: peak
allocated and reserved memory of QLoRA runs of Llama-3.2-1B/3B, batch 2 x 2048, on an H100/H200
(docs/benchmarks.md, bench/gpu/results/2026-11-25-h100.jsonl):

| run                                   | allocated | reserved    | this estimate (reserved) |
|---------------------------------------|-----------|-------------|--------------------------|
| 1B unsloth (recipe / raw)             | 1.69      | 2.07 / 1.78 | 2.01                     |
| 1B unsloth, packed 2 x 2048 / 8 x 2048 | 1.75 / 2.78 | 1.91 / 2.94 | 2.01 / 2.94           |
| 3B unsloth (recipe / raw)             | 3.04      | 3.47 / 3.21 | 3.44                     |
| 1B hf, checkpointing                  | 2.99      | 3.29        | 3.50                     |
| 3B hf, checkpointing                  | 5.32      | 5.93        | 5.36                     |

``tests/test_memory_estimate.py`` keeps the estimate within 15 % of these measured peaks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

GIB = 2**30

NF4_BYTES = 0.5 + 0.0159
"""Bytes per 4-bit weight: two values a byte, plus absmax constants (8-bit per 64 values, double-quantized)."""

LAYER_WORKSET = (6, 3)
"""One decoder layer's live activations during its backward, per token: 6 x hidden + 3 x intermediate values."""

LOGITS_BYTES = {"unsloth": 2.0, "hf": 3.0}
"""Bytes per token x vocabulary entry at the loss: transformers holds bf16 logits and a float32 upcast for part of the
loss; Unsloth's chunked cross-entropy holds bf16 logits of at most :data:`UNSLOTH_LOSS_TOKENS` tokens at a time."""

UNSLOTH_LOSS_TOKENS = 1536
"""Tokens whose logits Unsloth's loss holds at once: fitted to 1B at 2 x 2048 and 8 x 2048 packed tokens (peak
allocated 1.75 and 2.78 GiB) and 3B at 2 x 2048 (3.04 GiB): its loss memory does not grow with the micro-batch."""

RESERVE_FACTOR, RESERVE_EXTRA_GIB = 1.10, 0.10
"""Reserved = allocated x factor + extra: the caching allocator's unused blocks (measured 1.06-1.22x)."""

MISC_GIB = 0.03
"""Rotary caches, quantization states, small buffers."""


@dataclass
class Estimate:
    parameters: int
    weights_gib: float
    trainable_parameters: int
    activations_gib: float
    parts: dict[str, float] = field(default_factory=dict)
    training: bool = True
    tokens: int = 0
    per_token_gib: float = 0.0
    """What one more token in the micro-batch costs (activations + logits), for the largest micro-batch that fits."""
    bits: int = 16
    checkpointing: bool | str = False

    @property
    def allocated_gib(self) -> float:
        return sum(self.parts.values())

    @property
    def total_gib(self) -> float:
        """Peak reserved memory: what the GPU must have free."""
        return self.allocated_gib * RESERVE_FACTOR + RESERVE_EXTRA_GIB

    def max_tokens(self, capacity_gib: float, headroom: float = 0.9) -> int:
        """The most tokens per micro-batch whose peak stays under ``headroom`` of ``capacity_gib`` (0 if none)."""
        if not self.training or self.per_token_gib <= 0:
            return 0
        fixed = self.allocated_gib - self.per_token_gib * self.tokens
        room = (capacity_gib * headroom - RESERVE_EXTRA_GIB) / RESERVE_FACTOR - fixed
        return max(0, int(room / self.per_token_gib))

    def describe(self) -> str:
        size = f"{self.parameters / 1e9:.2f}B" if self.parameters >= 1e9 else f"{self.parameters / 1e6:.1f}M"
        if not self.training:
            return f"~{size} parameters: weights {self.weights_gib:.2f} GiB (no training)"
        parts = ", ".join(f"{part} {gib:.2f}" for part, gib in self.parts.items() if part != "weights")
        return (f"~{size} parameters: weights {self.weights_gib:.2f} GiB, training needs roughly "
                f"{self.total_gib:.2f} GiB ({parts}, allocator reserve {self.total_gib - self.allocated_gib:.2f})")


def read_config(folder: Path | None) -> dict | None:
    if folder is None:
        return None
    path = Path(folder) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return cfg.get("text_config", cfg) if isinstance(cfg, dict) else None


def count_parameters(cfg: dict) -> tuple[int, int, int]:
    """(total, per-layer linear, hidden) for a Llama-like config."""
    hidden = cfg["hidden_size"]
    layers = cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    inter = cfg["intermediate_size"]
    vocab = cfg["vocab_size"]
    attn = hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2
    mlp = 3 * hidden * inter
    per_layer = attn + mlp
    embed = vocab * hidden * (1 if cfg.get("tie_word_embeddings") else 2)
    return embed + layers * (per_layer + 2 * hidden) + hidden, per_layer, hidden


def optimizer_bytes(optim: str) -> float:
    """Optimizer state per trainable parameter."""
    if "8bit" in optim:
        return 2.0
    if optim.startswith("adafactor") or optim in ("sgd", "lomo", "adalomo"):
        return 0.0
    return 8.0


def estimate(cfg: dict, bits: int, lora_r: int | None, batch: int, seq: int, checkpointing: bool | str,
             *, backend: str = "hf", optim: str = "adamw_8bit", target_modules=None, modules_to_save=None,
             training: bool = True, on_gpu: bool = True) -> Estimate | None:
    """Peak memory of a run by part (None when the config is not Llama-like).

    ``bits``: 4/8 (bitsandbytes), 16 or 32; ``lora_r`` None: full fine-tuning; ``checkpointing``: False, True
    (layer inputs kept, each layer recomputed) or "unsloth" (layer inputs offloaded to CPU; only on that backend);
    ``batch`` x ``seq``: tokens per micro-batch (a packed micro-batch is batch rows of ``seq`` tokens).
    """
    try:
        total, per_layer, hidden = count_parameters(cfg)
        layers, vocab, inter = cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    linear = layers * per_layer
    other = total - linear
    half = 2 if on_gpu else 4  # compute dtype: bf16/fp16 on a GPU, fp32 on a CPU
    if bits == 4:
        weights = linear * NF4_BYTES + other * half
    elif bits == 8:
        weights = linear * 1.0 + other * half
    else:
        weights = total * bits / 8
    parts = {"weights": weights / GIB}
    if not training:
        return Estimate(total, weights / GIB, 0, 0.0, parts, training=False, bits=bits)
    if lora_r:
        from .parameters import lora_parameters

        trainable = lora_parameters(cfg, lora_r, target_modules or "all-linear", modules_to_save)
        if trainable is None:  # targets the config does not describe: the seven projections, roughly
            trainable = layers * lora_r * 2 * (7 * hidden)
        state = trainable * (4 + 4 + optimizer_bytes(optim))  # fp32 adapter weights, gradients, optimizer state
    else:
        trainable = total
        state = trainable * (bits / 8 if bits >= 16 else 2) + trainable * optimizer_bytes(optim)  # gradients + state
    parts["trainable state"] = state / GIB
    parts["buffers"] = MISC_GIB
    tokens = batch * seq
    act = 2 if on_gpu and bits != 32 else 4
    workset = tokens * (LAYER_WORKSET[0] * hidden + LAYER_WORKSET[1] * inter) * act
    if checkpointing == "unsloth" and backend == "unsloth":
        stored = 0.0  # layer inputs offloaded to CPU memory
    elif checkpointing:
        stored = layers * tokens * hidden * act
    else:
        stored = (layers - 1) * workset
    parts["activations"] = (workset + stored) / GIB
    chunked = backend == "unsloth"
    logits_bytes = LOGITS_BYTES["unsloth" if chunked else "hf"] * (act / 2)
    parts["logits and loss"] = (min(tokens, UNSLOTH_LOSS_TOKENS) if chunked else tokens) * vocab * logits_bytes / GIB
    growing = parts["activations"] + (0.0 if chunked else parts["logits and loss"])
    per_token = growing / tokens if tokens else 0.0
    return Estimate(total, weights / GIB, trainable, parts["activations"] + parts["logits and loss"], parts,
                    training=True, tokens=tokens, per_token_gib=per_token, bits=bits, checkpointing=checkpointing)


# ---------------------------------------------------------------- from a recipe
SURE_FACTOR = 1.15
"""A run is refused only when even its estimate divided by this (the estimate's measured error) cannot fit."""


_LLAMA32 = {"model_type": "llama", "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256,
            "tie_word_embeddings": True}
KNOWN_CONFIGS = {
    "llama-3.2-1b": {**_LLAMA32, "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "head_dim": 64},
    "llama-3.2-3b": {**_LLAMA32, "hidden_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 24, "head_dim": 128},
    "llama-3.1-8b": {**_LLAMA32, "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "head_dim": 128,
                     "intermediate_size": 14336, "tie_word_embeddings": False},
}
"""Architectures of well-known Hub models (config.json values), for planning on a machine that has not downloaded
them: matched by the Hub id's name (``unsloth/Llama-3.2-3B-Instruct``, ``meta-llama/Llama-3.2-1B`` ...)."""


def known_config(model: str) -> dict | None:
    name = model.rsplit("/", 1)[-1].lower()
    for key, cfg in KNOWN_CONFIGS.items():
        if name.startswith(key) or name.removeprefix("meta-").startswith(key):
            return dict(cfg)
    return None


def recipe_config(recipe) -> dict | None:
    """The recipe's model config.json when it is on this machine (a local folder, a converted GGUF, the HF cache),
    else the architecture of a well-known Hub model (:data:`KNOWN_CONFIGS`)."""
    from recipetune import UserError

    from .model_sources import gguf_cache_dir, local_model_path

    model = str(getattr(recipe.load.options, "model", "") or "")
    if not model:
        return None
    try:
        local = local_model_path(model)
    except UserError:
        return None
    if local is not None and local.suffix == ".gguf":
        local = gguf_cache_dir(local)
    if local is not None:
        return read_config(local)
    try:  # a Hub id already downloaded: read the cached config.json, never the network
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(model, "config.json", revision=getattr(recipe.load.options, "revision", None))
    except Exception:  # noqa: BLE001 - no hub library or a malformed id: unknown
        path = None
    return read_config(Path(path).parent) if isinstance(path, str) else known_config(model)


def weight_bits(load_options, on_gpu: bool) -> int:
    if getattr(load_options, "load_in_4bit", False):
        return 4
    if getattr(load_options, "load_in_8bit", False):
        return 8
    dtype = getattr(load_options, "dtype", "auto")
    if dtype == "float32" or (dtype == "auto" and not on_gpu):
        return 32
    return 16


def recipe_estimate(recipe, on_gpu: bool, cfg: dict | None = None) -> Estimate | None:
    """The memory estimate of ``recipe`` (None when its model's config is not on this machine or not Llama-like)."""
    cfg = cfg if cfg is not None else recipe_config(recipe)
    if cfg is None:
        return None
    lo = recipe.load.options
    adapt = recipe.adapt.options if recipe.adapt is not None and recipe.adapt.use == "lora" else None
    train = recipe.train.options if recipe.train is not None else None
    batch = getattr(train, "per_device_train_batch_size", 1)
    seq = (recipe.format.max_seq_length if recipe.format is not None and recipe.format.max_seq_length
           else getattr(lo, "max_seq_length", 2048))
    seq = max(seq, getattr(train, "packing_length", None) or 0)
    checkpointing = getattr(adapt, "gradient_checkpointing", False) if adapt is not None else False
    return estimate(cfg, weight_bits(lo, on_gpu), getattr(adapt, "r", None), batch, seq, checkpointing,
                    backend=recipe.load.use, optim=getattr(train, "optim", "adamw_torch"),
                    target_modules=getattr(adapt, "target_modules", None),
                    modules_to_save=getattr(adapt, "modules_to_save", None), training=train is not None,
                    on_gpu=on_gpu)


def memory_lines(est: Estimate) -> list[str]:
    """The estimate by part, one line each."""
    lines = [f"{part:<17} {gib:7.2f} GiB" for part, gib in est.parts.items()]
    lines.append(f"{'allocator reserve':<17} {est.total_gib - est.allocated_gib:7.2f} GiB")
    lines.append(f"{'peak (reserved)':<17} {est.total_gib:7.2f} GiB" + ("" if est.training else "  (loading only: the recipe trains nothing)"))
    return lines


def fit_verdict(est: Estimate, capacity_gib: float, where: str) -> tuple[str, str | None]:
    """("fits" | "tight" | "does not fit", the fix when it does not fit surely)."""
    if est.total_gib <= 0.9 * capacity_gib:
        return "fits", None
    if est.total_gib / SURE_FACTOR <= capacity_gib:
        return "tight", None
    return "does not fit", fix_for(est, capacity_gib)


def fix_for(est: Estimate, capacity_gib: float) -> str:
    fixes = []
    if est.training:
        most = est.max_tokens(capacity_gib)
        if most > 0:
            fixes.append(f"at most ~{most} tokens per micro-batch fit: lower train.per_device_train_batch_size or "
                         "load.max_seq_length and raise train.gradient_accumulation_steps to keep the effective batch")
        if not est.checkpointing:
            fixes.append("turn on adapt.gradient_checkpointing")
    if est.bits > 4:
        fixes.append("load_in_4bit = true (QLoRA) on a GPU")
    fixes.append("or a larger GPU (recipe plan RECIPE --gpu H100)")
    return "; ".join(fixes)


def fit_problem(est: Estimate, available_gib: float, where: str):
    """The recipe problem for a run that will not fit (an error, with the fix) or may not (a warning); else None."""
    from recipetune import Problem

    verdict, fix = fit_verdict(est, available_gib, where)
    if verdict == "fits":
        return None
    if verdict == "tight":
        return Problem("load.model", f"this run may not fit: {est.describe()}, and {where} has {available_gib:.1f} GiB "
                       "free (the estimate is within ~15%); recipe plan RECIPE shows where the memory goes",
                       severity="warning")
    return Problem("load.model", f"this run does not fit: {est.describe()} (even 15% less would not fit), and {where} "
                   f"has {available_gib:.1f} GiB free. Fix: {fix}")


def gpu_free_gib() -> tuple[float, str] | None:
    """Free memory of the first NVIDIA GPU and its name, from nvidia-smi (torch is not imported); None without one."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.free,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.splitlines()[0]
        name, free, _total = (x.strip() for x in out.split(","))
        return float(free) / 1024, f"GPU {name}"
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
