"""Reporter ``tensorboard``: the run's metrics as TensorBoard event files, inside the run folder.

``tensorboard --logdir runs/<name>/<stamp>`` (or the whole ``runs/`` folder, to compare runs) shows them. The
writer is TensorBoard's own, through ``torch.utils.tensorboard.SummaryWriter``; the values are the same ``on_metrics``
events ``metrics.jsonl`` is written from:

=============================  ====================================================
tag                            from
=============================  ====================================================
``train/loss``                 ``loss`` (per logged step)
``train/learning_rate``        ``learning_rate``
``train/grad_norm``            ``grad_norm`` (before clipping)
``train/tokens_per_second``    real (non-pad) tokens per second of step time
``train/epoch``, ``train/*``   ``epoch``, TRL's ``num_tokens``, ``entropy``, ``mean_token_accuracy``
``eval/loss``, ``eval/*``      ``eval_loss`` and the other ``eval_*`` metrics
``memory/*``                   ``memory_reserved_gib`` / ``memory_peak_allocated_gib`` (CUDA) or ``host_rss_gib``
=============================  ====================================================

A resumed run writes a new event file that starts with a *purge* at the checkpoint's step, so TensorBoard drops the
points the interrupted run logged past its checkpoint: every step appears once.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from recipetune import Options, Problem, ReportBlock, Reporter, checkpoints, hookimpl

SUMMARY_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss",
                "eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}
"""Timings and totals of a whole run or evaluation: not curves."""


def scalar_tag(key: str) -> str | None:
    """The TensorBoard tag of a metric key, or None for keys that are not curves."""
    if key in SUMMARY_KEYS or key == "step":
        return None
    if key == "loss":
        return "train/loss"
    if key.startswith("eval_"):
        return f"eval/{key[5:]}"
    if key.startswith("memory_") or key == "host_rss_gib":
        return f"memory/{key}"
    return f"train/{key}"


class TensorBoardOptions(Options):
    log_dir: str = "tensorboard"
    """Folder of the event files, inside the run folder."""


class TensorBoardReporter(Reporter):
    """Writes loss, eval loss, learning rate, grad norm, tokens/s and memory as TensorBoard scalars."""

    name = "tensorboard"
    Options = TensorBoardOptions

    def __init__(self, options=None):
        super().__init__(options)
        self.writer: Any = None
        self.points = 0
        self.tags: set[str] = set()

    def preflight(self, recipe):
        if importlib.util.find_spec("tensorboard") is None:
            path = next((f"{s.path}.use" for s in recipe.report if s.component is self), "report")
            yield Problem(path, "reporter \"tensorboard\" needs the tensorboard package: "
                          "pip install 'recipetune[tensorboard]'")

    def folder(self, run) -> Path:
        return Path(run.output_dir) / self.options.log_dir

    def _open(self, run) -> Any:
        if self.writer is None and run.is_main:
            from torch.utils.tensorboard import SummaryWriter

            purge = None
            if run.resume:  # drop what the interrupted run logged after the checkpoint it resumes from
                purge = (checkpoints.checkpoint_step(run.resume_from) if run.resume_from else 0) + 1
            self.writer = SummaryWriter(log_dir=str(self.folder(run)), purge_step=purge)
        return self.writer

    def on_stage_start(self, run, stage):
        if stage == "train":
            self._open(run)

    def on_metrics(self, run, step, metrics):
        writer = self._open(run)
        if writer is None:
            return
        for key, value in metrics.items():
            tag = scalar_tag(key)
            if tag is not None:
                writer.add_scalar(tag, value, global_step=step)
                self.tags.add(tag)
                self.points += 1

    def on_stage_end(self, run, stage, result):
        if stage == "train" and self.writer is not None:
            self.writer.close()
            self.writer = None

    def render(self, run):
        folder = self.folder(run)
        if not folder.exists():
            return None
        shown = ", ".join(sorted(self.tags)) if self.tags else "none this session"
        markdown = (f"Event files in `{folder.relative_to(run.output_dir)}/` ({self.points} points; tags: {shown}).\n\n"
                    f"Watch or compare: `tensorboard --logdir {run.output_dir}` (or the parent folder of several runs).")
        return ReportBlock("TensorBoard", markdown, data={"log_dir": str(folder), "tags": sorted(self.tags)})


@hookimpl
def register_reporters(register):
    register(TensorBoardReporter)
