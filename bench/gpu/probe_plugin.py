"""A recipetune plugin that measures a ``recipe run`` for the benchmark, from the outside.

Registered as entry point ``bench_probe`` (group ``recipetune``) by bench/gpu/setup_env.sh; it only
observes through hooks, so the run is an ordinary ``recipe run``:

- ``after_stage_run("adapt")``: a forward pre-hook on the model counts non-pad tokens of each
  training forward (``attention_mask`` sum, or every token of a padding-free row);
- ``before_stage_run("train")``: resets the CUDA peak-memory counters (as the raw loops do before
  their first step);
- ``on_metrics``: the time of each logged step (the Trainer's log has already synced with the GPU);
- ``after_stage_run("train")``: writes one JSON line (common.Meter) to ``$BENCH_RESULT``.

It does nothing unless ``BENCH_PATH`` is set.
"""

from __future__ import annotations

import os

from common import Meter

from recipetune import hookimpl

_state: dict = {}


def _active() -> bool:
    return bool(os.environ.get("BENCH_PATH"))


@hookimpl
def after_stage_run(run, stage, result):
    if not _active():
        return
    if stage == "format":
        stats = getattr(result, "stats", {}) or {}
        _state["format"] = {k: stats.get(k) for k in ("samples", "tokens", "trained_tokens", "truncated", "cache", "seconds")}
    elif stage == "adapt":
        import torch

        counter = {"tokens": torch.zeros((), dtype=torch.long, device="cuda" if torch.cuda.is_available() else "cpu"),
                   "read": 0}
        _state["counter"] = counter

        def count(module, args, kwargs):
            if not module.training:
                return
            if "first_forward" not in _state:  # what the trainer feeds the model: padded rows or one padding-free row
                ids = kwargs.get("input_ids", args[0] if args else None)
                _state["first_forward"] = {"kwargs": sorted(kwargs),
                                           "input_shape": list(ids.shape) if ids is not None else None,
                                           **memory_now()}
            mask = kwargs.get("attention_mask")
            ids = kwargs.get("input_ids", args[0] if args else None)
            if mask is not None and mask.dim() == 2:
                counter["tokens"] += mask.sum().to(counter["tokens"].device)
            elif ids is not None:
                counter["tokens"] += ids.numel()

        run.loaded.model.register_forward_pre_hook(count, with_kwargs=True)
    elif stage == "train":
        meter: Meter = _state["meter"]
        fmt = _state.get("format") or {}
        if meter.steps and all(m["tokens"] == 0 for m in meter.steps) and fmt.get("samples"):
            # The forward hook saw nothing (a trainer that bypasses Module.__call__): all samples have the same
            # length here (prepare.py checks), so a step trains batch x tokens-per-sample tokens.
            batch = run.recipe.train.options.per_device_train_batch_size
            for m in meter.steps:
                m["tokens"] = batch * fmt["tokens"] / fmt["samples"]
            meter.extra["tokens_estimated"] = True
        meter.extra["format"] = _state.get("format")
        meter.extra["first_forward"] = _state.get("first_forward")
        meter.extra["backend"] = run.recipe.load.use
        meter.extra["trainable_parameters"] = (run.state.get("trainable_parameters") or (None,))[0]
        meter.extra["stage_timings_s"] = dict(run.timings)
        meter.write()


def memory_now() -> dict:
    """Allocated / reserved GiB now, and the reserved peak so far (where the memory goes before step 1)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"allocated_gib": round(torch.cuda.memory_allocated() / 2**30, 3),
            "reserved_gib": round(torch.cuda.memory_reserved() / 2**30, 3),
            "max_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3)}


@hookimpl
def before_stage_run(run, stage):
    if not _active() or stage != "train":
        return
    import torch

    _state["meter"] = Meter(os.environ["BENCH_PATH"], os.environ.get("BENCH_SIZE", "?"),
                            int(os.environ.get("BENCH_WARMUP", "5")))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    _state["meter"].extra["at_train_start"] = memory_now()


@hookimpl
def on_metrics(run, step, metrics):
    if not _active() or "loss" not in metrics or "meter" not in _state:
        return
    counter = _state["counter"]
    total = int(counter["tokens"].item())
    tokens, counter["read"] = total - counter["read"], total
    _state["meter"].step(step, metrics["loss"], tokens)
