"""One call that runs a transformers Trainer the way every recipetune trainer should: resumable, watched, guarded.

:func:`supervised_training` adds to a built trainer the callbacks of ``checkpointing`` (complete checkpoints,
retention, Ctrl-C), ``step_metrics`` (tokens/s, memory), ``progress`` (the bar) and ``guards`` (NaN/inf), resumes
from ``run.resume_from``, and turns an interrupt, an out-of-memory error and a full disk into clear outcomes. A
trainer component (sft, and the preference trainers) builds its Trainer, then calls it with its own ``train`` call.
"""

from __future__ import annotations

from typing import Any, Callable

from recipetune import checkpoints

from .checkpointing import (InterruptFlag, TrainingInterrupted, add_fault_points, checkpoint_callback, interrupt_callback,
                            restore_extra_state, stop_on_interrupt)
from .guards import disk_full_error, divergence_callback, is_disk_full, is_out_of_memory, out_of_memory_error
from .progress import replace_trainer_progress
from .step_metrics import mean_train_loss, step_metrics_callback


def trainer_arguments(options: Any) -> dict[str, Any]:
    """Keyword arguments of ``TrainingArguments`` that supervision needs (merge them into the trainer's config)."""
    return {
        "save_total_limit": None,  # retention happens once a checkpoint is complete (checkpointing.py)
        "logging_nan_inf_filter": False,  # a NaN loss must reach the divergence guard, not be averaged away
    }


def supervised_training(run, loaded, trainer: Any, options: Any, precision: dict[str, bool],
                        train: Callable[..., Any] | None = None) -> Any:
    """Run ``train(**resume_kwargs)`` (default ``trainer.train``) with checkpoints, progress and guards.

    Returns the Trainer's ``TrainOutput``; raises :class:`TrainingInterrupted` after Ctrl-C (a checkpoint written)
    and :class:`recipetune.UserError` for a diverged loss, an out-of-memory error or a full disk.
    """
    train = train or trainer.train
    handler = trainer.callback_handler
    handler.callbacks.insert(1 if handler.callbacks else 0, step_metrics_callback(run, trainer))  # before metrics.jsonl
    saver = checkpoint_callback(run, options.save_total_limit)
    saver.trainer = trainer
    trainer.add_callback(saver)
    flag = InterruptFlag()
    trainer.add_callback(interrupt_callback(flag))
    trainer.add_callback(divergence_callback(run, precision))
    replace_trainer_progress(trainer)
    add_fault_points(trainer)

    kwargs = {}
    if run.resume and run.resume_from is None:
        run.logger.info("resuming training from the first step (the run has no complete checkpoint)")
    if run.resume_from is not None:
        restore_extra_state(trainer, run.resume_from)
        kwargs["resume_from_checkpoint"] = str(run.resume_from)
        run.logger.info("resuming training from %s (step %s)", run.resume_from.name,
                        checkpoints.checkpoint_step(run.resume_from))
    try:
        with stop_on_interrupt(flag, run.logger):
            out = train(**kwargs)
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full_error(run, exc) from exc
        if is_out_of_memory(exc):
            raise out_of_memory_error(run, loaded, exc) from exc
        raise
    if flag.requested:
        newest = checkpoints.newest_complete(run.checkpoints_dir)
        run.logger.info("interrupted at step %s; checkpoint %s", flag.stopped_at, newest)
        raise TrainingInterrupted(newest)
    whole_run = mean_train_loss(run.read_metrics())
    if whole_run is not None and hasattr(out, "_replace"):  # the Trainer averages only this session's steps
        out = out._replace(training_loss=whole_run)
    return out
