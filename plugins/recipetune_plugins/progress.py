"""Training progress on the terminal: a live bar with ETA, current loss and tokens/s, or plain lines when not a TTY.

The bar is tqdm's (the same library the Trainer's own bar uses); the Trainer's bar is removed so nothing prints
twice. When stderr is not a terminal (a log file, CI, ``nohup``), a bar's carriage returns would fill the file, so
the same facts come as one line every ``RECIPETUNE_PROGRESS_EVERY`` seconds (default 30) and at the last step:

    train step 12/60 (20%) · loss 1.2345 · 3,210 tok/s · elapsed 0:00:12 · ETA 0:00:48

``RECIPETUNE_PROGRESS=bar|lines|off`` forces a style. A resumed run's bar starts at the checkpoint's step, and its
ETA counts only the steps of this session.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from typing import Any, TextIO


def style(stream: TextIO) -> str:
    forced = os.environ.get("RECIPETUNE_PROGRESS", "").strip().lower()
    if forced in ("bar", "lines", "off"):
        return forced
    return "bar" if hasattr(stream, "isatty") and stream.isatty() else "lines"


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=int(max(0.0, seconds))))


def progress_line(step: int, total: int, loss: float | None, tokens_per_second: float | None, elapsed: float,
                  eta: float | None) -> str:
    """One plain progress line (also what the bar shows, in tqdm's own layout)."""
    parts = [f"train step {step}/{total}" + (f" ({100 * step / total:.0f}%)" if total > 0 else "")]
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if tokens_per_second is not None:
        parts.append(f"{tokens_per_second:,.0f} tok/s")
    parts.append(f"elapsed {_clock(elapsed)}")
    if eta is not None:
        parts.append(f"ETA {_clock(eta)}")
    return " · ".join(parts)


def progress_callback(stream: TextIO | None = None, every_s: float | None = None):
    """A TrainerCallback showing progress on ``stream`` (stderr by default)."""
    from transformers import TrainerCallback

    out = stream or sys.stderr
    interval = every_s if every_s is not None else float(os.environ.get("RECIPETUNE_PROGRESS_EVERY", "30"))

    class Progress(TrainerCallback):
        def __init__(self) -> None:
            self.mode = style(out)
            self.bar: Any = None
            self.redirect: Any = None
            self.total = 0
            self.first_step = 0
            self.started = 0.0
            self.last_line = 0.0
            self.loss: float | None = None
            self.tokens_per_second: float | None = None
            self.pending: int | None = None

        def _eta(self, step: int) -> float | None:
            done = step - self.first_step
            if done <= 0 or self.total <= 0:
                return None
            return (time.perf_counter() - self.started) / done * (self.total - step)

        def on_train_begin(self, args, state, control, **kwargs):
            self.total, self.first_step = state.max_steps, state.global_step
            self.started = self.last_line = time.perf_counter()
            if self.mode == "bar":
                from tqdm.auto import tqdm
                from tqdm.contrib.logging import logging_redirect_tqdm

                self.bar = tqdm(total=self.total, initial=self.first_step, desc="train", unit="step", file=out,
                                dynamic_ncols=True, leave=True)
                self.redirect = logging_redirect_tqdm()  # log lines print above the bar instead of through it
                self.redirect.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            step = state.global_step
            if self.bar is not None:
                self.bar.update(step - self.bar.n)
            elif self.mode == "lines":
                now = time.perf_counter()
                if step == self.first_step + 1 or step >= self.total or now - self.last_line >= interval:
                    self.last_line = now
                    logs_follow = args.logging_strategy == "steps" and step % max(int(args.logging_steps), 1) == 0
                    if logs_follow:
                        self.pending = step  # printed by on_log, with this step's loss
                    else:
                        self._print(step)

        def _print(self, step: int) -> None:
            print(progress_line(step, self.total, self.loss, self.tokens_per_second, time.perf_counter() - self.started,
                                self._eta(step)), file=out, flush=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                self.loss = float(logs["loss"])
                self.tokens_per_second = logs.get("tokens_per_second", self.tokens_per_second)
                if self.bar is not None:
                    postfix = {"loss": f"{self.loss:.4f}"}
                    if self.tokens_per_second is not None:
                        postfix["tok/s"] = f"{self.tokens_per_second:,.0f}"
                    self.bar.set_postfix(postfix)  # redraw: the bar shows this step with its own loss
                if self.pending is not None:
                    self._print(self.pending)
                    self.pending = None
            if "eval_loss" in logs and self.mode != "off":
                text = f"eval at step {state.global_step}: eval_loss {float(logs['eval_loss']):.4f}"
                if self.bar is not None:
                    self.bar.write(text, file=out)
                else:
                    print(text, file=out, flush=True)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            if self.redirect is not None:
                self.redirect.__exit__(None, None, None)
                self.redirect = None

    return Progress()


def replace_trainer_progress(trainer: Any, stream: TextIO | None = None) -> None:
    """Remove the Trainer's own tqdm bar (and its printer) and add ours."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if trainer.is_world_process_zero():  # several processes: one display, rank 0's (as the Trainer's own bar)
        trainer.add_callback(progress_callback(stream))
