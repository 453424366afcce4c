"""Hook specifications: every hook a recipetune plugin can implement.

Hooks are called with keyword arguments; an implementation may accept any
subset of a spec's arguments. Grouped by phase, as pytest's ``hookspec.py``:

1. registration — called once after all plugins load;
2. validation — checks across recipe sections, before anything heavy runs;
3. stages — each ``firstresult``: the core ships a ``trylast`` default that
   calls the component the recipe names; a plugin may take a stage over, or
   wrap it with ``wrapper=True``;
4. lifecycle — observe only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click

    from .components import Artifact, FormattedDataset, Loaded, TrainResult
    from .problems import Problem
    from .recipe.model import Recipe
    from .registry import Registry
    from .run import Run

PROJECT = "recipetune"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[type], None]


# ---------------------------------------------------------------------------- registration
@hookspec
def register_backends(register: Register) -> None:
    """Register model backends (the ``[load]`` stage).

    :param register: call ``register(BackendSubclass)`` once per backend. A
        name already taken by another plugin is refused, naming both plugins.
    """


@hookspec
def register_adapters(register: Register) -> None:
    """Register adapters (the ``[adapt]`` stage), such as LoRA.

    :param register: call ``register(AdapterSubclass)`` once per adapter.
    """


@hookspec
def register_dataset_formats(register: Register) -> None:
    """Register dataset standardizers (``[format] standardizer``), such as ShareGPT.

    :param register: call ``register(DatasetFormatSubclass)`` once per format.
    """


@hookspec
def register_chat_templates(register: Register) -> None:
    """Register chat templates (``[format] chat_template``), such as ``llama-3.1``.

    :param register: call ``register(ChatTemplateSubclass)`` once per template.
    """


@hookspec
def register_trainers(register: Register) -> None:
    """Register trainers (the ``[train]`` stage), such as TRL's SFT.

    :param register: call ``register(TrainerSubclass)`` once per trainer.
    """


@hookspec
def register_reporters(register: Register) -> None:
    """Register reporters (``[[report]]`` entries), such as the memory reporter.

    :param register: call ``register(ReporterSubclass)`` once per reporter.
    """


@hookspec
def register_exporters(register: Register) -> None:
    """Register exporters (``[[export]]`` entries): LoRA adapter, merged weights, GGUF.

    :param register: call ``register(ExporterSubclass)`` once per exporter.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``recipe`` command line.

    :param cli: the root ``click.Group``; decorate new commands with ``@cli.command()``.
        Keep heavy imports inside the command function so ``recipe --help`` stays fast.
    """


# ---------------------------------------------------------------------------- validation
@hookspec
def validate_recipe(recipe: Recipe, registry: Registry) -> list[Problem] | None:
    """Check a recipe across its sections, before any model is loaded.

    Every implementation is called; all problems are collected and shown at once.

    :param recipe: the recipe, each section already validated by its component's ``Options``.
    :param registry: the installed components, by kind and name.
    :return: a list of :class:`recipetune.Problem` (``severity="warning"`` for warnings), or None.
    """


# ---------------------------------------------------------------------------- stages
@hookspec(firstresult=True)
def load_model(run: Run) -> Loaded | None:
    """Stage 1: load the model and tokenizer named in ``[load]``.

    :param run: the run; ``run.recipe.load`` holds the backend's options.
    :return: a :class:`recipetune.Loaded`; the first non-None result wins.
    """


@hookspec(firstresult=True)
def adapt_model(run: Run, loaded: Loaded) -> Loaded | None:
    """Stage 2: make the model trainable as ``[adapt]`` says (LoRA...).

    :param run: the run.
    :param loaded: what the load stage returned.
    :return: the adapted :class:`recipetune.Loaded`.
    """


@hookspec(firstresult=True)
def format_dataset(run: Run, loaded: Loaded) -> FormattedDataset | None:
    """Stage 3: read, standardize, template and tokenize the dataset of ``[format]``.

    :param run: the run.
    :param loaded: the adapted model and its tokenizer (the tokenizer is used here).
    :return: a :class:`recipetune.FormattedDataset` with loss masks.
    """


@hookspec(firstresult=True)
def train_model(run: Run, loaded: Loaded, dataset: FormattedDataset) -> TrainResult | None:
    """Stage 4: train as ``[train]`` says.

    :param run: the run; log metrics with ``run.log_metrics(step, {...})``.
    :param loaded: the adapted model.
    :param dataset: the formatted dataset.
    :return: a :class:`recipetune.TrainResult`.
    """


@hookspec(firstresult=True)
def write_report(run: Run, result: TrainResult | None) -> Any:
    """Stage 5: write ``report.md`` (and its pictures) from the ``[[report]]`` reporters.

    :param run: the run.
    :param result: what the train stage returned.
    :return: the path of the report written.
    """


@hookspec(firstresult=True)
def export_model(run: Run, loaded: Loaded, result: TrainResult | None) -> list[Artifact] | None:
    """Stage 6: run every ``[[export]]`` exporter in order.

    :param run: the run; write under ``run.artifacts_dir``.
    :param loaded: the trained model.
    :param result: what the train stage returned.
    :return: the :class:`recipetune.Artifact` list written.
    """


# ---------------------------------------------------------------------------- lifecycle
@hookspec
def before_stage_run(run: Run, stage: str) -> None:
    """Called before a stage starts.

    :param run: the run.
    :param stage: ``load``, ``adapt``, ``format``, ``train``, ``report`` or ``export``.
    """


@hookspec
def after_stage_run(run: Run, stage: str, result: Any) -> None:
    """Called after a stage succeeded.

    :param run: the run.
    :param stage: the stage's name.
    :param result: what the stage returned.
    """


@hookspec
def on_stage_error(run: Run, stage: str, error: BaseException) -> None:
    """Called when a stage raised; the run then stops.

    :param run: the run.
    :param stage: the stage's name.
    :param error: the exception.
    """


@hookspec
def on_metrics(run: Run, step: int, metrics: dict[str, float]) -> None:
    """Called for every logged training step (after the line is written to ``metrics.jsonl``).

    :param run: the run.
    :param step: the optimizer step.
    :param metrics: loss, learning rate, grad norm... as floats.
    """
