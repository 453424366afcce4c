"""Turn a validated recipe into a run: prepare its folder, then call the six stages in order."""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__, atomic
from .problems import StageError, UserError
from .recipe.model import Recipe
from .run import STAGES, Run, default_output_dir

LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "bitsandbytes",
             "unsloth", "unsloth_zoo", "gguf", "llama_cpp_python", "pydantic", "pluggy")

STAGE_SECTION = {"load": "load", "adapt": "adapt", "train": "train"}


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "machine": platform.machine()}
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["ram_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = props.name
            info["gpu_memory_gib"] = round(props.total_memory / 2**30, 2)
            info["gpu_count"] = torch.cuda.device_count()
    return info


def seed_everything(seed: int) -> None:
    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    import torch

    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def resolved_document(run: Run) -> dict[str, Any]:
    recipe = run.recipe
    plugins = {name: {"distribution": i.distribution, "version": i.version, "module": i.module}
               for name, i in run.pm.info.items()}
    return {
        "recipe": recipe.resolved(),
        "source": str(recipe.source) if recipe.source else None,
        "overrides": recipe.overrides,
        "seed": recipe.seed,
        "recipetune": __version__,
        "plugins": plugins,
        "components": {s.path: {"use": s.use, "plugin": s.entry.plugin, "version": s.entry.version}
                       for s in recipe.sections()},
        "libraries": library_versions(),
        "hardware": hardware(),
        **({"distributed": run.state["distributed"]} if run.state.get("distributed") else {}),
    }


def prepare_run(recipe: Recipe, pm, output_dir: Path | None = None, resume: bool = False, fresh: bool = False) -> Run:
    """Open the run folder (new, resumed, or with ``fresh`` started over: :mod:`recipetune.run_folder`), write
    ``recipe.toml``, set up logging. A folder holding an unfinished run of the same recipe is resumed; ``resume``
    also continues a run whose recipe changed (or that finished). Raises :class:`UserError` to refuse a folder."""
    from . import distributed
    from .run_folder import open_run_folder, opening_of_other_rank

    if resume and fresh:
        raise UserError("--resume and --fresh contradict each other: give one")
    out = Path(output_dir) if output_dir else (recipe.header.output_dir or default_output_dir(recipe))
    mode = "fresh" if fresh else "resume" if resume else "auto"
    # only rank 0 changes the run folder; the other ranks read where to resume from
    opening = open_run_folder(out, recipe.resolved(), mode) if distributed.rank() == 0 else opening_of_other_rank(out, mode)
    out.mkdir(parents=True, exist_ok=True)
    run = Run(recipe=recipe, pm=pm, output_dir=out.resolve(), resume=opening.resume, resume_from=opening.resume_from)
    _attach_log_file(run)
    if not run.is_main:  # several processes: only rank 0 writes the run folder (each rank keeps its own log)
        return run
    for note in opening.notes:
        run.logger.info("%s", note)
    run.state["run_folder_notes"] = opening.notes
    run.artifacts_dir.mkdir(exist_ok=True)
    atomic.write_text(run.output_dir / "recipe.toml", _recipe_as_given(recipe))
    return run


def _recipe_as_given(recipe: Recipe) -> str:
    text = recipe.text
    if recipe.overrides:
        text = "# command-line overrides: " + " ".join(recipe.overrides) + "\n" + text
    return text


def _attach_log_file(run: Run) -> None:
    handler = logging.FileHandler(run.log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    run.logger.addHandler(handler)
    run.logger.setLevel(logging.INFO)
    run.state["_log_handler"] = handler


def _call_stage(run: Run, stage: str, values: dict[str, Any]) -> Any:
    """Call one stage's hook with what earlier stages produced."""
    hook = run.pm.hook
    if stage == "load":
        run.loaded = hook.load_model(run=run)
        return run.loaded
    if stage == "adapt":
        run.loaded = hook.adapt_model(run=run, loaded=run.loaded)
        return run.loaded
    if stage == "format":
        return hook.format_dataset(run=run, loaded=run.loaded)
    if stage == "train":
        return hook.train_model(run=run, loaded=run.loaded, dataset=values["format"])
    if stage == "report":
        return hook.write_report(run=run, result=values.get("train"))
    return hook.export_model(run=run, loaded=run.loaded, result=values.get("train"))


def execute(run: Run) -> Run:
    """Call load, adapt, format, train, report, export in order, with lifecycle hooks."""
    hook = run.pm.hook
    seed_everything(run.recipe.seed)
    from . import distributed

    run.state["distributed"] = distributed.describe_job(run.recipe)  # every rank: it gathers their hardware
    if run.is_main:
        run.write_json("resolved.json", resolved_document(run))
    values: dict[str, Any] = {}
    try:
        for stage in STAGES:
            if (stage == "train" and run.recipe.train is None) or (stage == "format" and run.recipe.format is None):
                continue  # an export-only recipe: load (and adapt), then export
            if stage in ("report", "export") and not run.is_main:
                continue  # the other ranks trained beside rank 0; it alone writes the report and artifacts
            hook.before_stage_run(run=run, stage=stage)
            started = time.perf_counter()
            run.logger.info("stage %s: started", stage)
            try:
                values[stage] = _call_stage(run, stage, values)
            except Exception as exc:
                hook.on_stage_error(run=run, stage=stage, error=exc)
                if isinstance(exc, StageError):
                    raise
                raise _stage_error(run, stage, exc) from exc
            run.timings[stage] = round(time.perf_counter() - started, 3)
            run.logger.info("stage %s: done in %.1f s", stage, run.timings[stage])
            hook.after_stage_run(run=run, stage=stage, result=values[stage])
        # The report is rewritten after export so it lists the artifacts and their checks.
        if not run.is_main:
            return run
        hook.write_report(run=run, result=values.get("train"))
        run.write_json("resolved.json", {**resolved_document(run), "timings": run.timings,
                                          "artifacts": [{"kind": a.kind, "path": str(a.path), **a.details} for a in run.artifacts],
                                          "finished": True})
    finally:
        handler = run.state.pop("_log_handler", None)
        if handler is not None:
            run.logger.removeHandler(handler)
            handler.close()
    return run


def _stage_error(run: Run, stage: str, exc: Exception) -> StageError:
    """Name the component (and its plugin) that a failing stage was running."""
    recipe = run.recipe
    if stage in STAGE_SECTION and run.section(stage) is not None:
        section = run.section(stage)
        return StageError(stage, f'{section.kind} "{section.use}"', section.entry.plugin, exc)
    if stage == "format" and recipe.standardizer is not None and recipe.chat_template is not None:
        name = f'dataset format "{recipe.standardizer.use}" / chat template "{recipe.chat_template.use}"'
        return StageError(stage, name, f"{recipe.standardizer.entry.plugin}, {recipe.chat_template.entry.plugin}", exc)
    return StageError(stage, None, None, exc)
