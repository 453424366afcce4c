"""Command ``recipe export RUN --to gguf|merged|lora``: export a finished run's model without training again.

A run that kept only its LoRA adapter (``[[export]] use = "lora"``) can still become GGUF files for
llama.cpp/Ollama or a merged folder: the adapter goes back on its base model (reloaded at full precision)
and the same exporter components a recipe names write the files into the run's ``artifacts/``; they are
added to ``resolved.json`` (so ``recipe generate RUN`` finds them) and to ``report.md``.

``recipe export RUN --check`` checks the run's GGUF files against the trained model with llama.cpp: for
files written where llama-cpp-python was missing, or with ``verify = false``.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from recipetune import UserError, hookimpl

TARGETS = ("gguf", "merged", "lora")


def export_tables(targets: tuple[str, ...], quantization: tuple[str, ...], dtype: str | None, verify: bool,
                  threads: int | None) -> list[dict[str, Any]]:
    """The ``[[export]]`` tables the command runs, from its options."""
    tables: list[dict[str, Any]] = []
    for target in dict.fromkeys(targets):
        table: dict[str, Any] = {"use": target}
        if target == "gguf":
            table.update({"quantization": list(quantization) or ["f16"], "verify": verify, "threads": threads})
        elif target == "merged" and dtype:
            table["dtype"] = dtype
        tables.append(table)
    return tables


def _append_report(done, title: str, artifacts: list[Any]) -> None:
    from recipetune.atomic import write_text

    path = done.folder / "report.md"
    text = path.read_text(encoding="utf-8") if path.exists() else f"# Run report: {done.folder.name}\n"
    lines = ["", f"## {title} ({datetime.now():%Y-%m-%d %H:%M})", ""]
    for a in artifacts:
        rel = a.path.relative_to(done.folder) if a.path.is_relative_to(done.folder) else a.path
        lines.append(f"- **{a.kind}**: `{rel}` — {a.description}")
        lines += [f"  {line}" for line in a.report.splitlines()]
    write_text(path, text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")


def export_run(folder: str, targets: tuple[str, ...], quantization: tuple[str, ...] = (), dtype: str | None = None,
               verify: bool = True, threads: int | None = None, logger: Any = None) -> list[Any]:
    """Write ``targets`` from the run in ``folder``; return the artifacts."""
    from recipetune import RecipeError
    from recipetune.plugins import get_plugin_manager
    from recipetune.recipe import load_recipe_text
    from recipetune.run import Run

    from .finished_run import export_recipe_text, open_run, original_recipe, rebuild_model

    done = open_run(folder)
    pm = get_plugin_manager()
    text = export_recipe_text(done, export_tables(targets, quantization, dtype, verify, threads))
    try:
        plan = load_recipe_text(text, file=f"<recipe export {done.folder.name}>", recipe_dir=done.folder, pm=pm)
    except RecipeError as exc:
        raise UserError("cannot export this run:\n" + "\n".join(p.render() for p in exc.problems)) from None
    problems = [p for s in plan.export for p in (s.component.preflight(plan) or ())]
    for p in problems:  # about this machine, not about a recipe file: no file and line to show
        click.echo(f"{'warning' if p.severity == 'warning' else 'error'}: {p.message}", err=True)
    if any(p.severity == "error" for p in problems):
        raise UserError("this machine cannot write these files (see above)")
    recipe = original_recipe(done, pm) or plan
    run = Run(recipe=recipe, pm=pm, output_dir=done.folder)
    if logger is not None:
        run.logger = logger
    run.logger.info("export: rebuilding the trained model of %s", done.folder)
    loaded = rebuild_model(done, run.logger)
    written: list[Any] = []
    for section in plan.export:
        run.logger.info("export: %s", section.use)
        written += section.component.export(run, loaded, None)
    done.record(written)
    _append_report(done, "Exported with recipe export", written)
    return written


def check_run(folder: str, threads: int | None = None, logger: Any = None) -> list[tuple[Path, Any]]:
    """Check every GGUF file of the run against its trained model with llama.cpp; record the results."""
    from recipetune import Artifact

    from .exporters import merged_model
    from .finished_run import open_run, rebuild_model
    from .generation import stop_ids
    from .gguf.exporter import llama_cpp_available
    from .gguf.verify import verify_gguf

    done = open_run(folder)
    files = [(Path(a["path"]), a) for a in done.artifacts if a.get("kind") == "gguf" and Path(a["path"]).exists()]
    if not files:
        raise UserError(f"{done.folder}: no GGUF files to check; write them with: recipe export {folder} --to gguf")
    if not llama_cpp_available():
        raise UserError("checking a GGUF file runs it in llama.cpp: pip install 'recipetune[gguf]' (llama-cpp-python)")
    loaded = rebuild_model(done, logger)
    model = merged_model(loaded, "float32")
    stops = set(stop_ids(model, loaded.tokenizer))
    results, checked = [], []
    for path, entry in files:
        check = verify_gguf(path, entry.get("type", "f16"), model, loaded.tokenizer, stops, threads=threads)
        results.append((path, check))
        details = {k: v for k, v in entry.items() if k not in ("kind", "path")}
        details["verification"] = check.as_dict()
        checked.append(Artifact("gguf", path, f"GGUF {entry.get('type', '?')} checked against transformers",
                                details, report="check: " + check.summary()))
    done.record(checked)
    _append_report(done, "GGUF checked with recipe export --check", checked)
    return results


@hookimpl
def register_commands(cli):
    @cli.command("export")
    @click.argument("run_folder", metavar="RUN")
    @click.option("--to", "targets", multiple=True, type=click.Choice(TARGETS),
                  help="What to write (repeatable): gguf files, a merged folder, or the LoRA adapter again.")
    @click.option("--quantization", "-q", multiple=True,
                  help="GGUF types for --to gguf (repeatable): f16, bf16, f32, q8_0, q4_k_m ... Default: f16.")
    @click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), help="dtype of --to merged.")
    @click.option("--no-verify", is_flag=True, help="Write GGUF files without checking them with llama.cpp.")
    @click.option("--check", is_flag=True, help="Check the run's GGUF files against the trained model with llama.cpp.")
    @click.option("--threads", type=click.IntRange(min=1), help="CPU threads for quantizing and checking.")
    def export(run_folder, targets, quantization, dtype, no_verify, check, threads):
        """Export the trained model of RUN (a run folder) without training: its LoRA adapter on the base model
        becomes GGUF files or a merged folder under RUN/artifacts.

        \b
          recipe export runs/quickstart/<stamp> --to gguf -q f16 -q q4_k_m
          recipe export runs/quickstart/<stamp> --to merged --dtype float16
          recipe export runs/quickstart/<stamp> --check      # check GGUF files written unchecked
        """
        import logging

        if not targets and not check:
            raise click.UsageError("say what to write with --to gguf|merged|lora, or --check the GGUF files")
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
        logger = logging.getLogger("recipetune.export")
        try:
            if targets:
                for a in export_run(run_folder, targets, quantization, dtype, not no_verify, threads, logger):
                    click.echo(f"{a.kind}: {a.path}")
            if check:
                failed = False
                for path, result in check_run(run_folder, threads, logger):
                    click.echo(f"{path.name}: {result.summary()}")
                    failed |= not result.passed
                if failed:
                    sys.exit(1)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None
