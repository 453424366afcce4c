"""The core's default stage implementations (``trylast``): call the component the recipe names.

This module is registered as a plugin named ``recipetune.stages``. It also
forwards lifecycle events to the recipe's reporters.
"""

from __future__ import annotations

from typing import Any

from .components import Artifact, FormattedDataset, Loaded, TrainResult
from .hookspecs import hookimpl
from .problems import StageError
from .run import Run


@hookimpl(trylast=True)
def load_model(run: Run) -> Loaded:
    return run.recipe.load.component.load(run)


@hookimpl(trylast=True)
def adapt_model(run: Run, loaded: Loaded) -> Loaded:
    if run.recipe.adapt is None:
        if run.recipe.train is not None:  # an export-only recipe trains nothing
            run.logger.info("no [adapt] table: every parameter is trained (full fine-tuning)")
        return loaded
    return run.recipe.adapt.component.adapt(run, loaded)


@hookimpl(trylast=True)
def format_dataset(run: Run, loaded: Loaded) -> FormattedDataset:
    from .data.pipeline import format_for_training

    return format_for_training(run, loaded)


@hookimpl(trylast=True)
def train_model(run: Run, loaded: Loaded, dataset: FormattedDataset) -> TrainResult:
    return run.recipe.train.component.train(run, loaded, dataset)


@hookimpl(trylast=True)
def write_report(run: Run, result: TrainResult | None) -> Any:
    from .report import write_report as write

    return write(run, result)


@hookimpl(trylast=True)
def export_model(run: Run, loaded: Loaded, result: TrainResult | None) -> list[Artifact]:
    artifacts: list[Artifact] = []
    for section in run.recipe.export:
        try:
            written = section.component.export(run, loaded, result)
        except Exception as exc:
            raise StageError("export", f'exporter "{section.use}" ({section.path})', section.entry.plugin, exc) from exc
        for artifact in written:
            run.logger.info("exported %s: %s", artifact.kind, artifact.path)
        artifacts.extend(written)
        run.artifacts.extend(written)
    return artifacts


# ---------------------------------------------------------------- reporters observe the run
@hookimpl
def before_stage_run(run: Run, stage: str) -> None:
    for section in run.recipe.report:
        section.component.on_stage_start(run, stage)


@hookimpl
def after_stage_run(run: Run, stage: str, result: Any) -> None:
    for section in run.recipe.report:
        section.component.on_stage_end(run, stage, result)


@hookimpl
def on_metrics(run: Run, step: int, metrics: dict[str, float]) -> None:
    for section in run.recipe.report:
        section.component.on_metrics(run, step, metrics)
