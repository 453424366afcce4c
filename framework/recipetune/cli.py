"""The ``recipe`` command line. Imports nothing heavy: torch loads only inside ``recipe run``."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path

import click

from . import __version__
from .problems import Problem, RecipeError, StageError, UserError

EXIT_PROBLEMS = 2
EXIT_FAILED = 1


def _pm():
    from .plugins import PluginLoadError, get_plugin_manager

    try:
        return get_plugin_manager()
    except PluginLoadError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)


def _print_problems(problems: list[Problem]) -> None:
    errors = [p for p in problems if p.severity == "error"]
    for p in problems:
        click.echo(p.render(), err=True)
    if errors:
        click.echo(f"{len(errors)} error{'s' if len(errors) != 1 else ''} in the recipe", err=True)


def _problem_json(p: Problem) -> dict:
    return {"severity": p.severity, "path": p.path, "message": p.message, "file": p.file, "line": p.line,
            "column": p.column, "override": p.override, "text": p.render()}


class LogFormat(logging.Formatter):
    """``INFO message`` / ``WARNING message``: the level once, even when a message starts with its own label."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        label = record.levelname
        for prefix in (f"{label}: ", f"{label.lower()}: ", f"{label} "):
            if message.startswith(prefix):
                message = message[len(prefix):]
                break
        return f"{label} {message}"


def _log_to_stderr() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(LogFormat())


def load_or_exit(recipe_path: str, overrides: tuple[str, ...], pm=None, as_json: bool = False):
    """Load a recipe, or print every problem and exit with status 2 (``as_json``: also as JSON on stdout)."""
    from .recipe import load_recipe

    try:
        recipe = load_recipe(recipe_path, list(overrides), pm=pm or _pm())
    except RecipeError as exc:
        _print_problems(exc.problems)
        if as_json:
            click.echo(json.dumps({"ok": False, "problems": [_problem_json(p) for p in exc.problems]}, indent=2))
        sys.exit(EXIT_PROBLEMS)
    for w in recipe.warnings:
        click.echo(w.render(), err=True)
    return recipe


def plan_lines(recipe) -> list[str]:
    lines = [f"recipe {recipe.name} (seed {recipe.seed})"]
    for section in recipe.sections():
        opts = section.options.model_dump(mode="json", exclude_defaults=True)
        shown = ", ".join(f"{k}={_short(v)}" for k, v in opts.items())
        lines.append(f"  {section.path:<22} {section.use:<12} {shown}")
        lines += [f"  {'':<22} - {line}" for line in section.component.describe_plan(recipe)]
    if recipe.format is not None and recipe.format.datasets:  # a mixture
        fmt = recipe.format
        for i, member in enumerate(fmt.datasets):
            share = (f", weight {member.weight:g}" if member.weight is not None else "") + (
                f", rows {member.rows}" if member.rows is not None else "")
            lines.append(f"  {f'format.datasets[{i}]':<22} {member.dataset} (split {member.split}{share})")
        lines.append(f"  {'format.mix':<22} {fmt.mix}" + (f", {fmt.mix_rows} rows" if fmt.mix_rows else "")
                     + f" (loss on {fmt.train_on} tokens)")
    elif recipe.format is not None:
        fmt = recipe.format
        lines.append(f"  {'format.dataset':<22} {fmt.dataset} (split {fmt.split}"
                     + (f", limit {fmt.limit}" if fmt.limit else "") + f", loss on {fmt.train_on} tokens)")
    return lines


def _short(value) -> str:
    """An option's value on one line: a long text (a chat template written in the recipe) by its first line."""
    text = str(value)
    if "\n" in text.strip() or len(text) > 80:
        first = text.strip().splitlines()[0]
        return f"{first[:40]}... ({len(text.strip().splitlines())} lines)"
    return text


class RecipeGroup(click.Group):
    """Adds commands from plugins (``register_commands``) when the group is built."""


@click.group(cls=RecipeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="recipetune")
def cli() -> None:
    """recipetune: fine-tune LLMs from a TOML recipe.

    \b
      recipe validate recipes/quickstart.toml     check a recipe (no GPU, no model loaded)
      recipe run recipes/quickstart.toml          run it: load, adapt, format, train, report, export
      recipe run recipes/quickstart.toml train.max_steps=10   override any key
    """


@cli.command()
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the resolved recipe as JSON (or, for a broken recipe, its problems).")
def validate(recipe_path: str, overrides: tuple[str, ...], as_json: bool) -> None:
    """Check RECIPE against the installed plugins and print the plan. Loads no model.

    OVERRIDES are KEY=VALUE pairs such as train.max_steps=10.
    """
    recipe = load_or_exit(recipe_path, overrides, as_json=as_json)
    if as_json:
        click.echo(json.dumps(recipe.resolved(), indent=2))
        return
    for line in plan_lines(recipe):
        click.echo(line)
    click.echo(f"{recipe_path}: ok")


@cli.command()
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--output-dir", type=click.Path(file_okay=False), help="Run folder (default: runs/<name>/<timestamp>).")
@click.option("--resume", is_flag=True, help="Continue the run in --output-dir from its newest complete checkpoint, "
              "even if the recipe changed or the run finished (a run folder of the same recipe resumes without it).")
@click.option("--fresh", is_flag=True, help="Start over in --output-dir: remove the earlier run it holds.")
@click.option("--debug", is_flag=True, help="Show Python tracebacks.")
@click.option("--nproc-per-node", type=click.IntRange(min=1), help="Processes (GPUs) on this machine: starts them through torch.distributed.run (docs/distributed.md).")
@click.option("--nnodes", type=click.IntRange(min=1), help="Machines in the job (with --rdzv-endpoint).")
@click.option("--node-rank", type=click.IntRange(min=0), help="This machine's rank among --nnodes (0 hosts the rendezvous).")
@click.option("--rdzv-endpoint", metavar="HOST:PORT", help="Where the machines of a job meet (node 0's address).")
def run(recipe_path: str, overrides: tuple[str, ...], output_dir: str | None, resume: bool, fresh: bool,
        debug: bool, **launch) -> None:
    """Run RECIPE: load, adapt, format, train, report, export.

    OVERRIDES are KEY=VALUE pairs such as train.max_steps=10 or load.load_in_4bit=false.
    """
    import logging

    pm = _pm()
    recipe = load_or_exit(recipe_path, overrides, pm)
    from .recipe.loader import locate_problems

    problems = locate_problems(recipe, [p for s in recipe.sections() for p in (s.component.preflight(recipe) or ())])
    if problems:
        _print_problems(problems)
    if any(p.severity == "error" for p in problems):
        sys.exit(EXIT_PROBLEMS)
    if resume and not output_dir and recipe.header.output_dir is None:
        click.echo("error: --resume needs --output-dir (or output_dir in the recipe): the run folder to continue", err=True)
        sys.exit(EXIT_PROBLEMS)
    from . import distributed, launcher

    if launcher.wants_launch(recipe, launch):  # several processes: torch.distributed.run starts them
        sys.exit(launcher.launch_from_cli(recipe, click.get_current_context(), launch))
    output_dir = launcher.join_job(recipe, output_dir)  # a worker of a job: its group, rank 0's run folder
    _log_to_stderr()
    distributed.quiet_other_ranks()
    from .runner import execute, prepare_run

    with distributed.main_first():  # rank 0 opens (or starts over) the run folder before the others read it
        run_ = prepare_run(recipe, pm, Path(output_dir) if output_dir else None, resume=resume, fresh=fresh)
    for line in ([f"run folder: {run_.output_dir}", *plan_lines(recipe)] if run_.is_main else ()):
        click.echo(line, err=True)
    try:
        execute(run_)
    except StageError as exc:
        _write_traceback(run_, exc)
        if debug:
            raise
        cause = exc.cause
        if isinstance(cause, UserError):
            who = ", ".join(part for part in (exc.component, f"plugin {exc.plugin}" if exc.plugin else None) if part)
            click.echo(f"error: {exc.stage} ({who}): {cause}", err=True)
        else:
            click.echo(f"error: {exc}", err=True)
        click.echo(f"(traceback in {run_.log_path}; rerun with --debug to show it)", err=True)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt as exc:
        click.echo("\n" + interrupted_message(exc, recipe_path, overrides, run_.output_dir), err=True)
        sys.exit(130)
    if not run_.is_main:  # rank 0 wrote the report and the artifacts
        return
    click.echo(f"report: {run_.output_dir / 'report.md'}")
    for a in run_.artifacts:
        click.echo(f"{a.kind}: {a.path}")


def resume_command(recipe_path: str, overrides: tuple[str, ...], output_dir: Path) -> str:
    """The command that continues a run in ``output_dir`` (a run folder of the same recipe resumes by itself)."""
    import shlex

    return " ".join(shlex.quote(part) for part in ("recipe", "run", recipe_path, *overrides, "--output-dir", str(output_dir)))


def interrupted_message(exc: BaseException, recipe_path: str, overrides: tuple[str, ...], output_dir: Path) -> str:
    checkpoint = getattr(exc, "checkpoint", None)
    from .checkpoints import newest_complete

    checkpoint = checkpoint or newest_complete(output_dir / "checkpoints")
    saved = f"checkpoint written: {checkpoint}" if checkpoint else "no checkpoint yet: a resumed run starts at step 1"
    return f"interrupted; {saved}\nresume with: {resume_command(recipe_path, overrides, output_dir)}"


def _write_traceback(run_, exc: BaseException) -> None:
    with run_.log_path.open("a", encoding="utf-8") as fh:
        fh.write("".join(traceback.format_exception(exc)))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List installed plugins, their versions, hooks and the components they register."""
    pm = _pm()
    registry = pm.registry
    rows = []
    for name, info in pm.info.items():
        components: dict[str, list[str]] = {}
        for entry in registry.entries():
            if entry.plugin == name:
                components.setdefault(entry.kind, []).append(entry.name)
        rows.append({"name": name, "distribution": info.distribution, "version": info.version,
                     "module": info.module, "hooks": pm.hooks_of(name), "components": components})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['name']} ({row['distribution'] or '?'} {row['version'] or ''})".rstrip())
        for kind, names in sorted(row["components"].items()):
            click.echo(f"    {kind}: {', '.join(sorted(names))}")
        click.echo(f"    hooks: {', '.join(row['hooks'])}")


@cli.command()
@click.option("--markdown", is_flag=True, help="Print the recipe reference as Markdown instead.")
def schema(markdown: bool) -> None:
    """Print the JSON schema of recipes for the installed plugins."""
    if markdown:
        from .recipe.reference import reference_markdown

        click.echo(reference_markdown(_pm().registry), nl=False)
        return
    from .recipe.schema import recipe_schema

    click.echo(json.dumps(recipe_schema(_pm().registry), indent=2))


_commands_added = False


def build_cli() -> click.Group:
    """The root group with plugin commands added (``register_commands``)."""
    global _commands_added
    if not _commands_added:
        _commands_added = True
        _pm().hook.register_commands(cli=cli)
    return cli


def main(argv: list[str] | None = None) -> None:
    try:
        build_cli().main(args=argv, prog_name="recipe")
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_PROBLEMS)
