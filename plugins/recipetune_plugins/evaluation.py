"""Evaluation that decides: the options and trainer callbacks behind ``train.keep``, early stopping and the best
weights.

- Evaluation itself is transformers' (``eval_strategy="steps"``, ``train.eval_steps``); its ``eval_*`` lines reach
  ``metrics.jsonl`` through the sft trainer's metrics callback.
- Early stopping is transformers' :class:`~transformers.EarlyStoppingCallback` (patience, minimum delta on
  ``metric_for_best_model``). transformers 5 tracks ``state.best_metric`` at every evaluation, so it needs no
  checkpoint per evaluation; the subclass here only drops its warning about ``load_best_model_at_end``, since
  :class:`BestWeights` does that job.
- ``keep = "best"`` is our own callback, :class:`BestWeights` (with ``keep = "last"`` it only records the best
  evaluation in ``best/best.json``), rather than ``load_best_model_at_end``: that option
  ties the best model to full checkpoints (``save_steps`` must be a multiple of ``eval_steps``, each one with the
  optimizer state, and checkpoint rotation decides what survives), so a run that checkpoints rarely -- or never --
  could not keep its best evaluation. :class:`BestWeights` writes only the *trainable* weights (a LoRA adapter: a
  few MB) at each new best, atomically, to ``<run>/best/``, and loads them back when training ends, so every stage
  after training -- ROUGE, the exporters -- sees the best weights. A resumed run keeps a best written before its
  checkpoint and forgets one written after it (those steps run again).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from recipetune import Options, Problem, hookimpl

KNOWN_METRICS = ("eval_loss", "eval_mean_token_accuracy", "eval_entropy")
"""What an evaluation of TRL's SFTTrainer reports (besides timings)."""

BEST_DIR = "best"
"""Folder of the run holding the best trainable weights (``weights.safetensors``) and ``best.json``."""


class EvaluationOptions(Options):
    """Options of the sft trainer about evaluation (a base class of its options)."""

    metric_for_best_model: str = "eval_loss"
    """The evaluation metric that decides the best weights (``keep = "best"``), early stopping and
    ``reduce_lr_on_plateau``: ``eval_loss``, or TRL's ``eval_mean_token_accuracy``."""
    greater_is_better: bool | None = None
    """Whether a larger ``metric_for_best_model`` is better; default: not for a name ending in ``loss``, yes otherwise."""
    early_stopping_patience: int | None = Field(default=None, ge=1)
    """Stop training after this many evaluations in a row without an improvement of ``early_stopping_threshold``
    (needs ``eval_steps``). Unset: no early stopping."""
    early_stopping_threshold: float = Field(default=0.0, ge=0.0)
    """Minimum change of ``metric_for_best_model`` that counts as an improvement for early stopping."""
    keep: Literal["last", "best"] = "last"
    """The weights a run ends with, reports on and exports: the last step's, or those of the best evaluation by
    ``metric_for_best_model`` (needs ``eval_steps``)."""
    lr_scheduler_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Extra arguments of the learning-rate schedule (transformers' ``lr_scheduler_kwargs``), e.g.
    ``{patience = 1, factor = 0.5}`` for ``reduce_lr_on_plateau`` (which lowers the rate when
    ``metric_for_best_model`` stops improving; needs ``eval_steps``)."""


def bigger_is_better(options: EvaluationOptions) -> bool:
    if options.greater_is_better is not None:
        return options.greater_is_better
    return not options.metric_for_best_model.endswith("loss")


def metric_key(name: str) -> str:
    """``loss`` -> ``eval_loss`` (as transformers reads ``metric_for_best_model``)."""
    return name if name.startswith("eval_") else f"eval_{name}"


def evaluation_problems(options: Any, recipe: Any) -> list[Problem]:
    """Options that cannot work together: a decision on evaluations that never run, an unknown metric."""
    problems = []
    needs_eval = []
    if options.early_stopping_patience:
        needs_eval.append(("train.early_stopping_patience", "early stopping compares evaluations"))
    if options.keep == "best":
        needs_eval.append(("train.keep", 'keep = "best" picks the best evaluation'))
    if options.lr_scheduler_type == "reduce_lr_on_plateau":
        needs_eval.append(("train.lr_scheduler_type", "reduce_lr_on_plateau lowers the rate when the eval metric stalls"))
    if not options.eval_steps:
        for key, why in needs_eval:
            problems.append(Problem(key, f"{why}, and none runs: set train.eval_steps (e.g. 50) and a validation set "
                                         "(format.validation_fraction = 0.05 or format.validation_split)"))
    if metric_key(options.metric_for_best_model) not in KNOWN_METRICS:
        problems.append(Problem("train.metric_for_best_model",
                                f"{options.metric_for_best_model!r} is not a metric the sft trainer's evaluation reports "
                                f"({', '.join(KNOWN_METRICS)}); training stops with an error at the first evaluation "
                                "if it is missing", severity="warning"))
    return problems


def evaluation_arguments(options: EvaluationOptions, has_eval: bool) -> dict[str, Any]:
    """Keyword arguments of ``SFTConfig`` for the metric (read by early stopping and ``reduce_lr_on_plateau``)."""
    extra = {"lr_scheduler_kwargs": dict(options.lr_scheduler_kwargs)} if options.lr_scheduler_kwargs else {}
    if not has_eval:
        return extra
    return {**extra, "metric_for_best_model": metric_key(options.metric_for_best_model),
            "greater_is_better": bigger_is_better(options)}


def evaluation_callbacks(run: Any, options: EvaluationOptions, has_eval: bool) -> list[Any]:
    """The callbacks these options ask for (none without a validation set)."""
    if not has_eval or not getattr(options, "eval_steps", None):
        return []
    from transformers import EarlyStoppingCallback

    class EarlyStopping(EarlyStoppingCallback):
        """transformers' early stopping, without its warning that the best model is not loaded (BestWeights does)."""

        def on_train_begin(self, args, state, control, **kwargs):
            if args.metric_for_best_model is None or args.eval_strategy == "no":
                raise ValueError("early stopping needs evaluations and metric_for_best_model")

        def on_evaluate(self, args, state, control, metrics, **kwargs):
            super().on_evaluate(args, state, control, metrics, **kwargs)
            if self.early_stopping_patience_counter >= self.early_stopping_patience:
                run.logger.info("early stopping at step %d: %s did not improve by more than %g for %d evaluations",
                                state.global_step, args.metric_for_best_model, self.early_stopping_threshold,
                                self.early_stopping_patience)
                run.state["early_stopped_at"] = state.global_step

    callbacks: list[Any] = [BestWeights.create(run, options)]
    if options.early_stopping_patience:
        callbacks.append(EarlyStopping(early_stopping_patience=options.early_stopping_patience,
                                       early_stopping_threshold=options.early_stopping_threshold))
    return callbacks


def read_best(run_dir: Path) -> dict[str, Any] | None:
    """``best.json`` of a run folder: ``{"step", "metric", "value", "epoch"}``, or None."""
    path = Path(run_dir) / BEST_DIR / "best.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class _BestWeightsBase:
    """Shared logic of :class:`BestWeights` (kept apart from transformers so it imports lazily)."""

    def __init__(self, run: Any, options: EvaluationOptions):
        self.run = run
        self.metric = metric_key(options.metric_for_best_model)
        self.greater = bigger_is_better(options)
        self.keep = options.keep
        self.folder = Path(run.output_dir) / BEST_DIR
        self.best: dict[str, Any] | None = None
        self.warned = False

    def better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value > self.best["value"] if self.greater else value < self.best["value"]

    def begin(self, step: int) -> None:
        """At the start of training (or of a resumed one at ``step``): keep a best recorded up to ``step``."""
        import shutil

        best = read_best(self.run.output_dir)
        if best is not None and 0 < best["step"] <= step and best.get("metric") == self.metric:
            self.best = best
            self.run.logger.info("best so far (before resuming): step %d, %s %.4f", best["step"], self.metric, best["value"])
        elif self.folder.exists():
            shutil.rmtree(self.folder)  # a fresh run, or a best from steps that run again

    def record(self, model: Any, step: int, epoch: float | None, metrics: dict[str, float]) -> None:
        value = metrics.get(self.metric)
        if value is None:
            if not self.warned:
                self.warned = True
                self.run.logger.warning("the evaluation reported no %s (it reported %s): no best weights are kept",
                                        self.metric, ", ".join(sorted(metrics)))
            return
        if not self.better(float(value)):
            return
        from safetensors.torch import save_file

        from recipetune.atomic import atomic_dir, write_json

        # the weights only when they will be used: a full fine-tune's would be the whole model at every new best
        tensors = ({name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}
                   if self.keep == "best" else {})
        self.best = {"step": int(step), "metric": self.metric, "value": float(value), "epoch": epoch,
                     "tensors": len(tensors)}
        with atomic_dir(self.folder) as tmp:
            if tensors:
                save_file(tensors, str(Path(tmp) / "weights.safetensors"))
            write_json(Path(tmp) / "best.json", self.best)
        self.run.state["best"] = dict(self.best)
        self.run.logger.info("new best at step %d: %s %.4f%s", step, self.metric, value,
                             f" (weights in {self.folder})" if tensors else "")

    def finish(self, model: Any, last_step: int) -> None:
        """Load the best weights into ``model`` when ``keep = "best"``; say which weights the run keeps."""
        if self.best is None:  # other ranks than 0 read what rank 0 wrote
            self.best = read_best(self.run.output_dir)
        if self.keep != "best":
            self.run.state["kept"] = {"keep": "last", "step": last_step, "best": self.best}
            return
        if self.best is None:
            self.run.logger.warning('keep = "best", but no evaluation reported %s: keeping the last weights (step %d)',
                                    self.metric, last_step)
            self.run.state["kept"] = {"keep": "last", "step": last_step, "best": None}
            return
        load_trainable(model, self.folder / "weights.safetensors")
        self.run.logger.info("keeping the best weights: step %d, %s %.4f (the last step was %d)",
                             self.best["step"], self.metric, self.best["value"], last_step)
        self.run.state["kept"] = {"keep": "best", "step": self.best["step"], "best": self.best, "last_step": last_step}


def load_trainable(model: Any, path: Path) -> None:
    """Copy the tensors of ``path`` into the parameters of ``model`` with the same names (all must be found)."""
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(path))
    params = dict(model.named_parameters())
    missing = sorted(set(saved) - set(params))
    if missing:
        raise ValueError(f"the best weights in {path} do not fit this model: no parameter {missing[0]!r} "
                         f"({len(missing)} of {len(saved)} missing)")
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))


class BestWeights:
    """A trainer callback that keeps the best trainable weights by ``metric_for_best_model`` (see the module doc)."""

    @staticmethod
    def create(run: Any, options: EvaluationOptions):
        from transformers import TrainerCallback

        class _BestWeights(_BestWeightsBase, TrainerCallback):
            # transformers calls on_train_begin before it loads a resumed checkpoint's state: the step to resume
            # from is known at the first step (or evaluation, or the end) instead
            started = False

            def _start(self, state):
                if not self.started:
                    self.started = True
                    if state.is_world_process_zero:
                        self.begin(state.global_step)

            def on_step_begin(self, args, state, control, **kwargs):
                self._start(state)

            def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
                self._start(state)
                if state.is_world_process_zero and metrics and model is not None:
                    self.record(model, state.global_step, state.epoch, metrics)

            def on_train_end(self, args, state, control, model=None, **kwargs):
                self._start(state)
                if model is not None:
                    self.finish(model, state.global_step)

        return _BestWeights(run, options)


WEIGHT_ARTIFACTS = ("lora", "merged", "gguf")
"""Artifacts that hold the trained weights: they say whether those are the best or the last."""


@hookimpl
def after_stage_run(run, stage, result):
    """Exported weights say which weights they are: the best evaluation's (``keep = "best"``) or the last step's."""
    kept = run.state.get("kept")
    if stage != "export" or not kept:
        return
    best = kept.get("best")
    for artifact in run.artifacts:
        if artifact.kind not in WEIGHT_ARTIFACTS or "weights" in artifact.details:
            continue
        artifact.details.update({"weights": kept["keep"], "weights_step": kept["step"]})
        if kept["keep"] == "best":
            artifact.description += (f" — the best weights by {best['metric']} ({best['value']:.4f} at step "
                                     f"{best['step']}; training ended at step {kept['last_step']})")
