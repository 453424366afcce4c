"""Throughput and memory on each logged training line: ``tokens_per_second`` and ``memory_*_gib`` / ``host_rss_gib``.

They go into the same ``logs`` dict the trainer passes to every callback, before the one that writes
``metrics.jsonl``, so the metrics file, TensorBoard, the progress bar and the plots all see them.

Tokens are *real* tokens, counted here from every micro-batch the trainer's ``training_step`` receives: the
attention-mask sum, or for a packed or padding-free batch (no mask; position ids keep samples apart) every token of
the row — never padding. (TRL's own ``num_tokens`` is not enough: Unsloth's patched trainer does not update it.)
The count stays on the device until a line is logged, so it adds no synchronisation per step. Time is the time spent
inside optimizer steps (``on_step_begin`` to ``on_step_end``), so evaluation and checkpoint writing do not lower the
rate.
"""

from __future__ import annotations

import os
import time
from typing import Any

GIB = 2**30


def host_rss_gib() -> float | None:
    """This process's resident memory now (Linux ``/proc``), or None elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / GIB
    except (OSError, ValueError, IndexError):
        return None


def memory_now() -> dict[str, float]:
    """GPU memory reserved/allocated (peak since the last call) on CUDA; host RSS otherwise."""
    import torch

    if torch.cuda.is_available():
        values = {"memory_reserved_gib": torch.cuda.memory_reserved() / GIB,
                  "memory_peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB}
        return {k: round(v, 3) for k, v in values.items()}
    rss = host_rss_gib()
    return {"host_rss_gib": round(rss, 3)} if rss is not None else {}


def mean_train_loss(metrics: list[dict[str, float]]) -> float | None:
    """The mean loss per optimizer step over the whole run, from its logged lines (each weighted by its steps).

    The Trainer's own ``train_loss`` averages only the steps of the current session, so a resumed run would report
    another number than an uninterrupted one; this is the same for both.
    """
    total = steps = 0.0
    previous = 0
    for row in metrics:
        if "loss" in row and "step" in row:
            n = max(int(row["step"]) - previous, 1)
            total += float(row["loss"]) * n
            steps += n
            previous = int(row["step"])
    return total / steps if steps else None


def real_tokens(inputs: Any) -> Any:
    """The number of non-pad tokens of one micro-batch (a tensor or an int)."""
    if not isinstance(inputs, dict):
        return 0
    mask = inputs.get("attention_mask")
    if mask is not None:
        return mask.sum()
    ids = inputs.get("input_ids")
    return ids.numel() if ids is not None else 0


class TokenCounter:
    """Wraps ``trainer.training_step`` to add up the real tokens of every micro-batch."""

    def __init__(self, trainer: Any) -> None:
        self.total: Any = 0
        step = trainer.training_step

        def counting_step(model, inputs, *args, **kwargs):
            self.total = self.total + real_tokens(inputs)
            return step(model, inputs, *args, **kwargs)

        trainer.training_step = counting_step

    def value(self) -> float:
        return float(self.total.item() if hasattr(self.total, "item") else self.total)


def step_metrics_callback(run, trainer: Any = None):
    """A TrainerCallback adding ``tokens_per_second`` and memory to training log lines."""
    from transformers import TrainerCallback

    class StepMetrics(TrainerCallback):
        def __init__(self) -> None:
            self.step_time = 0.0
            self.step_started: float | None = None
            self.counter = TokenCounter(trainer) if trainer is not None else None
            self.last_tokens = 0.0
            self.last_time = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.step_started = time.perf_counter()
            run.state["last_step"] = state.global_step + 1

        def on_step_end(self, args, state, control, **kwargs):
            if self.step_started is not None:
                self.step_time += time.perf_counter() - self.step_started
                self.step_started = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is not None and "train_loss" in logs:  # the summary line at the end of training
                whole_run = mean_train_loss(run.read_metrics())
                if whole_run is not None:
                    logs["train_loss"] = whole_run
            if logs is None or "loss" not in logs:
                return
            elapsed = self.step_time - self.last_time
            if self.counter is not None and elapsed > 0:
                tokens = self.counter.value()
                logs["tokens_per_second"] = round((tokens - self.last_tokens) / elapsed, 1)
                self.last_tokens = tokens
            self.last_time = self.step_time
            logs.update(memory_now())

    return StepMetrics()
