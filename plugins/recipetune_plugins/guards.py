"""Guards around training: a diverged loss, an out-of-memory error and a full disk end with what to do, not a traceback.

- :func:`divergence_callback` stops at the first logged loss (or gradient norm) that is NaN or infinite, naming the
  step, the learning rate then, the last complete checkpoint and the usual causes. The Trainer's
  ``logging_nan_inf_filter`` must be off (``sft`` turns it off), or it replaces a NaN loss by the mean of the others;
- :func:`out_of_memory_error` turns ``torch.OutOfMemoryError`` into the fixes that apply to this recipe, with the
  estimate ``recipe plan`` shows;
- :func:`disk_full_error` turns ENOSPC into "nothing was lost": checkpoints count only once complete
  (``recipetune.checkpoints``), so the one being written is removed and the earlier ones are untouched; every other
  file of the run folder is written to a temporary file and renamed (``recipetune.atomic``).
"""

from __future__ import annotations

import errno
import math
from recipetune import UserError, checkpoints


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def _last_good(run) -> str:
    newest = checkpoints.newest_complete(run.checkpoints_dir)
    return (f"The last complete checkpoint is {newest}" if newest else
            "There is no checkpoint to go back to (set train.save_steps to write them)")


def divergence_callback(run, precision: dict[str, bool]):
    """A TrainerCallback that raises :class:`TrainingDiverged` at the first non-finite loss or gradient norm."""
    from transformers import TrainerCallback

    class StopOnDivergence(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm", "eval_loss"):
                value = (logs or {}).get(key)
                if isinstance(value, (int, float)) and not math.isfinite(value):
                    raise TrainingDiverged(diverged_message(run, state.global_step, key, value, logs, precision))

    return StopOnDivergence()


def diverged_message(run, step: int, key: str, value: float, logs: dict, precision: dict[str, bool]) -> str:
    options = run.recipe.train.options
    lr = logs.get("learning_rate")
    hints = [f"lower train.learning_rate (now {options.learning_rate:g}"
             + (f"; {lr:.3g} at this step" if isinstance(lr, (int, float)) else "") + ")"]
    if precision.get("fp16"):
        hints.append("fp16 overflows easily: use train.precision = \"bf16\" on a GPU that has it, or \"fp32\"")
    else:
        hints.append("check the precision (train.precision; fp16 overflows, fp32 is the safest)")
    hints.append(f"keep gradient clipping on (train.max_grad_norm, now {options.max_grad_norm:g}) and warm up longer "
                 f"(train.warmup_steps, now {options.warmup_steps})")
    hints.append("look for broken rows in the data (recipe data RECIPE)")
    return (f"training diverged: {key} is {value} at step {step}; stopped so that no checkpoint holds broken weights. "
            f"{_last_good(run)}. Likely fixes: " + "; ".join(hints)
            + ". Then resume with --resume (it continues from that checkpoint with the changed recipe) or start over "
            "with --fresh.")


def out_of_memory_error(run, loaded, exc: BaseException) -> UserError:
    """What to change when training ran out of memory (GPU or host)."""
    recipe = run.recipe
    train = recipe.train.options
    adapt = recipe.adapt.options if recipe.adapt is not None else None
    load = recipe.load.options
    fixes = []
    if train.per_device_train_batch_size > 1:
        fixes.append(f"a smaller micro-batch: train.per_device_train_batch_size={max(1, train.per_device_train_batch_size // 2)} "
                     f"with train.gradient_accumulation_steps={train.gradient_accumulation_steps * 2} "
                     "(the same effective batch)")
    else:
        fixes.append("a micro-batch of 1 is already the smallest: raise train.gradient_accumulation_steps instead of it")
    if adapt is not None and not getattr(adapt, "gradient_checkpointing", True):
        fixes.append("activation checkpointing: adapt.gradient_checkpointing=true")
    if not getattr(load, "load_in_4bit", True):
        fixes.append("4-bit weights (QLoRA): load.load_in_4bit=true")
    seq = getattr(load, "max_seq_length", None)
    if seq:
        fixes.append(f"shorter sequences: load.max_seq_length={max(64, seq // 2)} (now {seq})")
    if getattr(train, "packing", False):
        fixes.append("packing off (train.packing=false) makes rows shorter")
    where = "the GPU" if "cuda" in str(getattr(loaded, "device", "")) or "CUDA" in str(exc) else "this machine"
    plan = ""
    estimate = getattr(recipe.load.component, "estimate", None)
    try:
        est = estimate(recipe) if callable(estimate) else None
    except Exception:  # the estimate is a hint; never let it hide the real error
        est = None
    if est is not None:
        plan = f" recipe plan estimated {est.describe()}."
        capacity = _gpu_capacity_gib()
        if capacity and getattr(est, "training", False) and hasattr(est, "max_tokens"):
            most = est.max_tokens(capacity)
            if most > 0:
                plan += f" On this GPU ({capacity:.0f} GiB) it expects at most ~{most} tokens per micro-batch to fit."
    step = run.state.get("last_step")
    at = f" at step {step}" if step else ""
    return UserError(f"out of memory on {where}{at} ({str(exc).splitlines()[0][:160]}).{plan} Likely fixes: "
                     + "; ".join(fixes) + f". {_last_good(run)}.")


def _gpu_capacity_gib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())) or isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)  # the CPU allocator's wording


def is_disk_full(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(run, exc: BaseException) -> UserError:
    """Remove the checkpoint being written (it is incomplete) and say that the earlier ones are intact."""
    removed = checkpoints.discard_incomplete(run.checkpoints_dir)
    gone = f" The incomplete {', '.join(p.name for p in removed)} was removed." if removed else ""
    return UserError(f"the disk is full ({exc}).{gone} Nothing written before was lost. "
                     f"{_last_good(run)}. Free some space (or lower train.save_total_limit), then run the same "
                     "command again: it resumes from there.")
