"""Per-rank measurements of a multi-GPU ``recipe run`` for bench/gpu/multi_gpu.py (only when MGPU_LABEL is set).

Registered as entry point ``mgpu_probe`` (group ``recipetune``) by bench/gpu/multi_gpu.sh; it observes through
hooks only. Each rank writes ``$MGPU_OUT/probe/<label>.rank<N>.json``: peak allocated / reserved GPU memory while
loading and while training, stage times, and (rank 0) the seconds from the launch (``MGPU_T0``) to step 1.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from recipetune import hookimpl

_times: dict[str, float] = {"imported": time.time()}
GIB = 2**30


def _active() -> bool:
    return bool(os.environ.get("MGPU_LABEL"))


def _peaks() -> dict[str, float]:
    import torch

    if not torch.cuda.is_available():
        return {"allocated_gib": 0.0, "reserved_gib": 0.0}
    return {"allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
            "reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3)}


@hookimpl
def before_stage_run(run, stage):
    if not _active():
        return
    _times[f"{stage}_start"] = time.time()
    if stage == "train":  # what loading left as the peak, then the training peak alone
        import torch

        _times["load_peaks"] = _peaks()  # type: ignore[assignment]
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()


@hookimpl
def on_metrics(run, step, metrics):
    if _active() and "first_step" not in _times and "loss" in metrics:
        _times["first_step"] = time.time()


@hookimpl
def after_stage_run(run, stage, result):
    if not _active():
        return
    _times[f"{stage}_end"] = time.time()
    if stage != "train":
        return
    t0 = float(os.environ.get("MGPU_T0", _times["imported"]))
    stages = {s: round(_times[f"{s}_end"] - _times[f"{s}_start"], 2) for s in ("load", "adapt", "format")
              if f"{s}_end" in _times}
    if "first_step" in _times:
        stages["train_to_first_step"] = round(_times["first_step"] - _times["train_start"], 2)
    stages["launch_to_import"] = round(_times["imported"] - t0, 2)
    peaks = _peaks()
    doc = {"rank": run.rank, "world_size": run.world_size, "peak_allocated_gib": peaks["allocated_gib"],
           "peak_reserved_gib": peaks["reserved_gib"], "load_peaks": _times.get("load_peaks"), "stages": stages,
           "first_step_s": round(_times["first_step"] - t0, 2) if "first_step" in _times else None}
    folder = Path(os.environ["MGPU_OUT"]) / "probe"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{os.environ['MGPU_LABEL']}.rank{run.rank}.json").write_text(json.dumps(doc))
