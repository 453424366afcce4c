"""Memory per GPU when N GPUs train one recipe: what ``ddp``, ``fsdp`` and ``deepspeed`` keep on each GPU.

Built on the one-GPU estimate of :mod:`memory_estimate` (same parts, same reserve factor) for ``recipe plan``:

- ``ddp``: every GPU holds everything one GPU would, plus DDP's gradient buckets (a copy of the trainable
  gradients, fp32);
- ``fsdp`` (FSDP2, one unit per decoder layer, resharded after forward): each GPU keeps 1/N of the weights and of
  the trainable state, plus the layers gathered whole while they run (the current one and the next, prefetched);
- ``deepspeed`` ZeRO-2: 1/N of the trainable state (gradients, optimizer), whole weights; ZeRO-3: like fsdp.

Activations and logits are per micro-batch: the same on every GPU whatever the strategy. A planning number, like
the one-GPU estimate; measured on two GPUs by ``bench/gpu/multi_gpu.py``.
"""

from __future__ import annotations

from dataclasses import replace

from .memory_estimate import GIB, Estimate, count_parameters

STRATEGIES = ("ddp", "fsdp", "deepspeed")
GATHERED_LAYERS = 2
"""Decoder layers an FSDP rank holds whole at once: the one running and the next one, prefetched."""


def per_gpu_estimate(est: Estimate, cfg: dict, world_size: int, strategy: str, zero_stage: int = 2) -> Estimate:
    """``est`` (one GPU) as one of ``world_size`` GPUs training with ``strategy`` sees it: the same parts, sharded."""
    if world_size <= 1 or not est.training:
        return est
    parts = dict(est.parts)
    shards_weights = strategy == "fsdp" or (strategy == "deepspeed" and zero_stage == 3)
    if shards_weights:
        _total, per_layer, _hidden = count_parameters(cfg)
        bytes_per_weight = est.weights_gib * GIB / max(est.parameters, 1)
        layer_gib = per_layer * bytes_per_weight / GIB
        parts["weights"] = est.weights_gib / world_size + GATHERED_LAYERS * layer_gib
    if strategy in ("fsdp", "deepspeed"):
        parts["trainable state"] = parts.get("trainable state", 0.0) / world_size
    if strategy == "ddp":
        parts["gradient buckets"] = est.trainable_parameters * 4 / GIB
    return replace(est, parts=parts, weights_gib=parts["weights"])


def strategy_lines(est: Estimate, cfg: dict, world_size: int, capacity_gib: float | None = None,
                   zero_stage: int = 2) -> list[str]:
    """One line per strategy: peak reserved memory per GPU on ``world_size`` GPUs, and whether it fits
    ``capacity_gib`` (when given). For ``recipe plan --gpus N``."""
    lines = []
    for strategy in STRATEGIES:
        one = per_gpu_estimate(est, cfg, world_size, strategy, zero_stage)
        name = f"deepspeed ZeRO-{zero_stage}" if strategy == "deepspeed" else strategy
        verdict = ""
        if capacity_gib:
            verdict = " - fits" if one.total_gib <= 0.9 * capacity_gib else f" - does not fit {capacity_gib:.0f} GiB"
        lines.append(f"{name:<18} {one.total_gib:6.2f} GiB per GPU (weights {one.parts['weights']:.2f}, "
                     f"trainable state {one.parts.get('trainable state', 0.0):.2f}){verdict}")
    return lines
