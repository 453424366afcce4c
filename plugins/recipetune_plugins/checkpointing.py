"""Checkpoints a run can be resumed from, on top of transformers' ``Trainer``.

The Trainer already writes what a resume needs into ``checkpoint-<step>/`` (adapter or model, optimizer, scheduler,
scaler, RNG states of python/numpy/torch/CUDA, ``trainer_state.json`` with the step, the epoch and the callbacks'
state) and, given ``resume_from_checkpoint``, restores them and skips the batches already trained on. What it lacks,
added here:

- **completeness**: the Trainer writes a checkpoint file by file, so a killed process leaves a folder that looks
  like one. :class:`CheckpointCallback` writes ``recipetune-checkpoint.json`` (``recipetune.checkpoints``) after
  the Trainer's last file; only such folders are resumed from;
- **retention after completion**: the Trainer deletes old checkpoints *before* the new one is known complete (a kill
  right then can leave none with ``save_total_limit = 1``); here the Trainer keeps everything
  (``save_total_limit=None``) and the callback deletes the surplus once the new checkpoint is complete, keeping the
  best one (``state.best_model_checkpoint``) when evaluation chose one;
- **TRL's running token count** (``num_tokens`` in the logs), which TRL keeps outside the Trainer's state: saved in
  the manifest and put back on resume, so a resumed run logs the same lines as an uninterrupted one;
- **Ctrl-C**: :func:`stop_on_interrupt` turns the first SIGINT into "finish this step, write a checkpoint, stop";
  the caller raises :class:`recipetune.checkpoints`-aware :class:`TrainingInterrupted` (the CLI prints the command
  that resumes). A second Ctrl-C stops at once;
- **fault points** for tests: ``RECIPETUNE_FAULT=checkpoint-write:<step>:kill`` kills the process with SIGKILL in
  the middle of writing the checkpoint of that step (``*`` for any), ``...:sleep=<seconds>`` pauses there.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from recipetune import checkpoints

FAULT_ENV = "RECIPETUNE_FAULT"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training after writing a checkpoint (``checkpoint``: its folder, or None)."""

    def __init__(self, checkpoint: Path | None):
        super().__init__(f"interrupted; checkpoint {checkpoint}" if checkpoint else "interrupted")
        self.checkpoint = checkpoint


def fault_point(name: str, step: int) -> None:
    """Kill or pause the process here when ``RECIPETUNE_FAULT`` names this point (tests only)."""
    spec = os.environ.get(FAULT_ENV, "")
    for item in filter(None, spec.split(",")):
        parts = item.split(":")
        if len(parts) != 3 or parts[0] != name or parts[1] not in ("*", str(step)):
            continue
        action = parts[2]
        if action == "kill":
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        elif action.startswith("sleep="):
            print(f"fault point {name} at step {step}: sleeping {action[6:]} s", file=sys.stderr, flush=True)
            time.sleep(float(action[6:]))


def add_fault_points(trainer: Any) -> None:
    """Under ``RECIPETUNE_FAULT``, put the ``checkpoint-write`` point between the model and the optimizer files."""
    if not os.environ.get(FAULT_ENV):
        return
    save = trainer._save_optimizer_and_scheduler

    def save_with_fault(output_dir: str) -> None:
        fault_point("checkpoint-write", trainer.state.global_step)
        save(output_dir)

    trainer._save_optimizer_and_scheduler = save_with_fault


def checkpoint_callback(run, keep: int):
    """A TrainerCallback that marks each checkpoint complete, then deletes the surplus beyond ``keep``."""
    from transformers import TrainerCallback

    class CheckpointCallback(TrainerCallback):
        trainer: Any = None

        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not folder.is_dir():
                return
            extra = {}
            tokens = getattr(self.trainer, "_total_train_tokens", None)
            if tokens is not None:
                extra["trl_total_train_tokens"] = int(tokens)
            checkpoints.mark_complete(folder, state.global_step, extra)
            removed = checkpoints.rotate(Path(args.output_dir), keep, protect=(state.best_model_checkpoint,))
            run.logger.info("checkpoint %s written%s", folder.name,
                            f" (removed {', '.join(p.name for p in removed)})" if removed else "")

    return CheckpointCallback()


def restore_extra_state(trainer: Any, checkpoint: Path) -> None:
    """Put back what the Trainer does not restore itself (TRL's running token count)."""
    manifest = checkpoints.read_manifest(checkpoint) or {}
    if "trl_total_train_tokens" in manifest and hasattr(trainer, "_total_train_tokens"):
        trainer._total_train_tokens = manifest["trl_total_train_tokens"]


class InterruptFlag:
    """Set by the first Ctrl-C; the callback turns it into save-and-stop at the end of the step."""

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None


def interrupt_callback(flag: InterruptFlag):
    from transformers import TrainerCallback

    class StopOnInterrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if flag.requested and flag.stopped_at is None:
                flag.stopped_at = state.global_step
                control.should_save = True
                control.should_training_stop = True
            return control

    return StopOnInterrupt()


@contextmanager
def stop_on_interrupt(flag: InterruptFlag, logger) -> Iterator[InterruptFlag]:
    """While training: the first SIGINT asks for a checkpoint and a stop, a second one interrupts at once."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\ninterrupt: finishing this step and writing a checkpoint (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)
        logger.info("interrupt received: writing a checkpoint after this step")

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
