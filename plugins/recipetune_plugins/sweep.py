"""Command ``recipe sweep``: one run per combination of a grid, resumably, with a comparison.

    recipe sweep recipes/sweep_lr_scheduler.toml
    recipe sweep RECIPE --grid train.learning_rate=1e-4,2e-4,4e-4 --grid train.lr_scheduler_type=linear,cosine

The grid comes from the recipe's ``[sweep.grid]`` table and from ``--grid KEY=V1,V2,...`` (which replaces that key's
values). Every combination is validated before anything runs. Each run is ``recipe run RECIPE OVERRIDES...
--output-dir <sweep folder>/<run name>`` in a child process of its own, so a run's memory (a GPU's too) is given
back before the next one starts and a crash of one run does not end the sweep. The child dies with the sweep
(``PR_SET_PDEATHSIG`` on Linux), so a killed sweep leaves no run behind it.

Resuming: ``sweep.json`` in the sweep folder records each run's status, written atomically after every change.
Running the same command again skips the finished runs and runs the others; a run that was killed half-way
continues from its newest complete checkpoint (``recipe run`` resumes a run folder of the same recipe by itself).
A lock file keeps two sweeps out of one folder. After every run the comparison is rewritten
(:mod:`.sweep_report`): ``sweep.md``, ``sweep.csv``, ``sweep.json`` and ``loss_per_epoch.png``.

Why not Optuna or Ray Tune: a grid over recipe keys needs neither a search algorithm nor a scheduler, and the
runs must stay ordinary run folders that ``recipe run`` can resume on its own.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from recipetune import Problem, hookimpl

STATE_FILE = "sweep.json"
LOCK_FILE = ".sweep.lock"
_checking_grid = False
"""Set while validate_recipe loads the recipe with one grid value: the nested load does not check its grid again."""


# ---------------------------------------------------------------- grid values
def toml_value(value: Any) -> str:
    """A value of a ``[sweep.grid]`` list as override text (a TOML value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


def split_values(text: str) -> list[str]:
    """``1e-4,2e-4`` -> ``["1e-4", "2e-4"]``; commas inside brackets, braces or quotes do not split
    (``[q_proj,v_proj],[q_proj]`` is two values)."""
    parts, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def build_grid(table: dict[str, list[Any]], cli_grids: tuple[str, ...]) -> dict[str, list[str]]:
    """Keys and their values as override text: the recipe's ``[sweep.grid]``, then ``--grid`` (replacing a key)."""
    from recipetune.recipe.overrides import parse_path

    grid = {key: [toml_value(v) for v in values] for key, values in table.items()}
    for item in cli_grids:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not parse_path(key) or not split_values(values):
            raise click.UsageError(f"--grid {item!r}: expected KEY=V1,V2,... such as train.learning_rate=1e-4,2e-4")
        grid[key] = split_values(values)
    return grid


def _shown(text: str) -> str:
    """An override value as a person reads it: ``"linear"`` -> ``linear``."""
    from recipetune.recipe.overrides import parse_value

    value = parse_value(text)
    return value if isinstance(value, str) else text


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def run_name(index: int, params: dict[str, str]) -> str:
    """``01-learning_rate=1e-4-lr_scheduler_type=linear``: safe as a folder name."""
    text = "-".join(f"{_short(k)}={_shown(v)}" for k, v in params.items())
    text = re.sub(r"[^A-Za-z0-9._=+\-]+", "_", text)[:80].strip("_")
    return f"{index:02d}-{text}"


def combinations(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


# ---------------------------------------------------------------- validation of [sweep.grid]
@hookimpl
def validate_recipe(recipe, registry):
    """Each value of ``[sweep.grid]`` must be one the recipe accepts at its key (checked one value at a time)."""
    global _checking_grid
    sweep = getattr(recipe.header, "sweep", None)
    if sweep is None or not sweep.grid or _checking_grid:
        return []
    from recipetune.problems import RecipeError
    from recipetune.recipe import load_recipe_text
    from recipetune.recipe.overrides import parse_path
    from recipetune.recipe.positions import index_positions

    positions = index_positions(recipe.text)
    file = str(recipe.source) if recipe.source else "<recipe>"
    problems = []
    _checking_grid = True
    try:
        for key, values in sweep.grid.items():
            line, column = positions.get(("sweep", "grid", key), positions.get(("sweep", "grid"), (None, None)))
            where = {"file": file, "line": line, "column": column}
            if not parse_path(key):
                problems.append(Problem(f"sweep.grid.{key}", "not a dotted recipe key such as \"train.learning_rate\"", **where))
                continue
            if not values:
                problems.append(Problem(f"sweep.grid.{key}", "no values: give a list such as [1e-4, 2e-4]", **where))
            for value in values:
                override = f"{key}={toml_value(value)}"
                try:
                    load_recipe_text(recipe.text, file=file, recipe_dir=recipe.source.parent if recipe.source else None,
                                     overrides=[*recipe.overrides, override])
                except RecipeError as exc:
                    for p in exc.problems:
                        if p.severity == "error":
                            problems.append(Problem(f"sweep.grid.{key}", f"the value {toml_value(value)}: {p.message}", **where))
    finally:
        _checking_grid = False
    return problems


# ---------------------------------------------------------------- the sweep folder
def sweep_folder(recipe, output_dir: str | None) -> Path:
    if output_dir:
        return Path(output_dir).resolve()
    sweep = recipe.header.sweep
    if sweep is not None and sweep.output_dir is not None:
        return Path(sweep.output_dir).resolve()
    return (Path.cwd() / "runs" / f"{recipe.name}-sweep").resolve()


def lock(folder: Path):
    """Hold the folder's lock file for the life of this process (released when it exits, even when killed)."""
    import fcntl

    handle = open(folder / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise click.ClickException(f"another recipe sweep is running in {folder}; wait for it, or stop it") from None
    return handle


def finished(run_dir: Path) -> bool:
    """A run folder whose run got to its end: ``report.md`` and a ``resolved.json`` with the stage timings."""
    try:
        resolved = json.loads((run_dir / "resolved.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (run_dir / "report.md").exists() and "timings" in resolved


def load_state(folder: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """The recorded state of this sweep (statuses kept), or ``fresh`` when the folder holds none."""
    path = folder / STATE_FILE
    if not path.exists():
        return fresh
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise click.ClickException(f"{path} is not readable JSON; move it away to start this sweep over") from None
    if old.get("grid") != fresh["grid"] or old.get("overrides") != fresh["overrides"]:
        raise click.ClickException(
            f"{folder} holds a sweep of another grid or other overrides ({path}); give another --output-dir, or "
            "delete that folder to start over")
    statuses = {r["name"]: r for r in old.get("runs", [])}
    for run in fresh["runs"]:
        before = statuses.get(run["name"], {})
        for key in ("status", "returncode", "seconds"):
            if key in before:
                run[key] = before[key]
    return fresh


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """In the child: a process group of its own (a terminal's Ctrl-C reaches the sweep, which passes it on once),
    and SIGTERM when the sweep process dies (Linux), so no run outlives a killed sweep."""
    os.setpgid(0, 0)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------- the command
@click.command("sweep")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--grid", "grids", multiple=True, metavar="KEY=V1,V2,...",
              help="A key and its values (repeat for more keys); replaces the key's values in [sweep.grid].")
@click.option("--output-dir", type=click.Path(file_okay=False),
              help="The sweep's folder (default: [sweep] output_dir, else runs/<name>-sweep).")
@click.option("--dry-run", is_flag=True, help="Validate every combination, list the runs, and run none.")
def sweep(recipe_path: str, overrides: tuple[str, ...], grids: tuple[str, ...], output_dir: str | None,
          dry_run: bool) -> None:
    """Run RECIPE once per combination of a grid, each into its own run folder, and compare the runs.

    OVERRIDES (KEY=VALUE) apply to every run. Running the same command again continues a sweep that was
    stopped: finished runs are skipped, a run stopped half-way resumes from its newest checkpoint.

    \b
      recipe sweep recipes/sweep_lr_scheduler.toml
      recipe sweep RECIPE --grid train.learning_rate=1e-4,2e-4 --grid train.lr_scheduler_type=linear,cosine
    """
    from recipetune.cli import load_or_exit

    recipe = load_or_exit(recipe_path, overrides)
    table = recipe.header.sweep.grid if recipe.header.sweep is not None else {}
    grid = build_grid(table, grids)
    if not grid:
        raise click.UsageError("nothing to sweep: give --grid KEY=V1,V2,... or a [sweep.grid] table in the recipe")
    combos = combinations(grid)
    _check_combinations(recipe_path, overrides, combos)
    folder = sweep_folder(recipe, output_dir)
    runs = [{"name": run_name(i, combo), "params": {k: _shown(v) for k, v in combo.items()}, "overrides": [f"{k}={v}" for k, v in combo.items()],
             "status": "pending"} for i, combo in enumerate(combos, start=1)]
    click.echo(f"sweep of {len(runs)} runs into {folder}", err=True)
    if dry_run:
        for run in runs:
            click.echo(f"  {run['name']}: {' '.join(run['overrides'])}")
        return
    folder.mkdir(parents=True, exist_ok=True)
    held = lock(folder)  # noqa: F841  (held until this process ends)
    state = load_state(folder, {"recipe": str(Path(recipe_path).resolve()), "recipe_name": recipe.name,
                                "grid": grid, "overrides": list(overrides), "runs": runs})
    from .sweep_report import write_comparison

    write_comparison(folder, state)
    failed = 0
    for run in state["runs"]:
        run_dir = folder / run["name"]
        if run["status"] == "done" or finished(run_dir):
            if run["status"] != "done":
                run["status"] = "done"
                write_comparison(folder, state)
            click.echo(f"[sweep] {run['name']}: finished before, skipped", err=True)
            continue
        code = _run_one(recipe_path, overrides, run, run_dir, folder, state)
        failed += code != 0
    written = write_comparison(folder, state)
    click.echo(written["md"].read_text(encoding="utf-8"))
    click.echo(f"comparison: {written['md']}, {written['csv']}" + (f", {written['png']}" if "png" in written else ""),
               err=True)
    if failed:
        click.echo(f"error: {failed} run(s) failed; their run.log says why. Run the same command again to retry them.",
                   err=True)
        sys.exit(1)


def _check_combinations(recipe_path: str, overrides: tuple[str, ...], combos: list[dict[str, str]]) -> None:
    """Load the recipe with every combination before anything runs; print the problems of each and exit 2."""
    from recipetune.cli import EXIT_PROBLEMS, _print_problems
    from recipetune.problems import RecipeError
    from recipetune.recipe import load_recipe

    bad = 0
    for combo in combos:
        try:
            load_recipe(recipe_path, [*overrides, *(f"{k}={v}" for k, v in combo.items())])
        except RecipeError as exc:
            bad += 1
            click.echo(f"combination {' '.join(f'{k}={v}' for k, v in combo.items())}:", err=True)
            _print_problems(exc.problems)
    if bad:
        click.echo(f"{bad} of {len(combos)} combinations cannot run; nothing was started", err=True)
        sys.exit(EXIT_PROBLEMS)


def _run_one(recipe_path: str, overrides: tuple[str, ...], run: dict[str, Any], run_dir: Path, folder: Path,
             state: dict[str, Any]) -> int:
    """Run one combination in a child ``recipe run``; record its status. Returns its exit code."""
    from .sweep_report import write_comparison

    resumed = run_dir.exists()
    command = [sys.executable, "-m", "recipetune", "run", recipe_path, *overrides, *run["overrides"],
               "--output-dir", str(run_dir)]
    click.echo(f"[sweep] {run['name']}: {'continuing' if resumed else 'starting'} "
               f"({' '.join(run['overrides'])})", err=True)
    started = time.perf_counter()
    child = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                             preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    run.update(status="running", pid=child.pid)
    write_comparison(folder, state)
    try:
        code = child.wait()
    except KeyboardInterrupt:  # pass it on, once: the run writes a checkpoint and stops
        child.send_signal(signal.SIGINT)
        try:
            child.wait()
        except KeyboardInterrupt:  # Ctrl-C again: the run stops at once
            child.send_signal(signal.SIGINT)
            child.wait()
        run["status"] = "interrupted"
        write_comparison(folder, state)
        import shlex

        again = shlex.join(["recipe", *sys.argv[1:]]) if sys.argv[1:2] == ["sweep"] else f"recipe sweep {recipe_path} ..."
        click.echo(f"\n[sweep] interrupted during {run['name']}; continue with the same command:\n  {again}", err=True)
        sys.exit(130)
    run.pop("pid", None)
    run["seconds"] = round(time.perf_counter() - started + float(run.get("seconds") or 0), 1)
    run["returncode"] = code
    run["status"] = "done" if code == 0 else "failed"
    write_comparison(folder, state)
    click.echo(f"[sweep] {run['name']}: {run['status']} in {run['seconds']:.0f} s", err=True)
    return code


@hookimpl
def register_commands(cli):
    cli.add_command(sweep)
