"""A rough training-memory estimate from a model's config, shown in the plan and checked before a run.

Weights + LoRA (+ its optimizer state) + activations, for Llama-family configs. It is
a planning number (within ~30 % on the models we measured), not a promise: its job is
to warn *before* loading that a run will not fit, instead of failing with an OOM an hour in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30


@dataclass
class Estimate:
    parameters: int
    weights_gib: float
    trainable_parameters: int
    activations_gib: float

    @property
    def total_gib(self) -> float:
        # trainable params: weights (counted above) + grads (4 B) + Adam states (8 B)
        return self.weights_gib + self.trainable_parameters * 12 / GIB + self.activations_gib

    def describe(self) -> str:
        size = f"{self.parameters / 1e9:.2f}B" if self.parameters >= 1e9 else f"{self.parameters / 1e6:.1f}M"
        return (f"~{size} parameters: weights {self.weights_gib:.2f} GiB, "
                f"training needs roughly {self.total_gib:.2f} GiB")


def read_config(folder: Path | None) -> dict | None:
    if folder is None:
        return None
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def count_parameters(cfg: dict) -> tuple[int, int, int]:
    """(total, per-layer linear, hidden) for a Llama-like config."""
    hidden = cfg["hidden_size"]
    layers = cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads)
    head_dim = cfg.get("head_dim") or hidden // heads
    inter = cfg["intermediate_size"]
    vocab = cfg["vocab_size"]
    attn = hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2
    mlp = 3 * hidden * inter
    per_layer = attn + mlp
    embed = vocab * hidden * (1 if cfg.get("tie_word_embeddings") else 2)
    return embed + layers * (per_layer + 2 * hidden) + hidden, per_layer, hidden


def estimate(cfg: dict, bits: int, lora_r: int | None, batch: int, seq: int, checkpointing: bool) -> Estimate | None:
    try:
        total, per_layer, hidden = count_parameters(cfg)
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    layers = cfg["num_hidden_layers"]
    weights = total * bits / 8 / GIB
    if bits == 4:  # embeddings and lm_head stay in 16 bit; quantization constants
        weights = (total - cfg["vocab_size"] * hidden * 2) * 0.56 / GIB + cfg["vocab_size"] * hidden * 2 * 2 / GIB
    if lora_r:
        trainable = layers * lora_r * 2 * (7 * hidden)  # the seven projections, in + out, roughly
    else:
        trainable = total
    tokens = batch * seq
    act_bytes = 2 if bits in (4, 16) else 4
    per_layer_act = tokens * hidden * act_bytes * (2 if checkpointing else 16)
    logits = tokens * cfg["vocab_size"] * 4 * 2
    activations = (layers * per_layer_act + logits) / GIB
    return Estimate(total, weights, trainable, activations)
