"""Opening a run folder: start a new run, resume the one it holds, or (asked to) start over — never mix two runs.

``recipe run RECIPE --output-dir DIR`` decides here, before any model loads:

- a missing or empty folder: a new run;
- a folder holding an unfinished run of the same recipe: resume it from its newest complete checkpoint (or from the
  first step when it has none), after dropping the checkpoints that were being written when it stopped and the
  metric lines past the checkpoint (the resumed run logs those steps again);
- a finished run, a run of a different recipe, or a folder that holds something else: refused with what to do
  (``--fresh`` starts over in a run folder; ``--resume`` continues a run whose recipe changed);
- ``--fresh`` on a run folder: its earlier contents are removed, and each removed entry is named.

A folder counts as a run folder when it holds ``recipe.toml``, ``resolved.json`` or ``run.log``; recipetune never
deletes anything in a folder that is not one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import atomic, checkpoints
from .problems import UserError

Mode = Literal["auto", "resume", "fresh"]

RUN_FOLDER_MARKERS = ("recipe.toml", "resolved.json", "run.log")
"""Files only a run folder has."""


@dataclass
class Opening:
    """What :func:`open_run_folder` decided."""

    resume: bool = False
    """True when the run continues the one in the folder."""
    resume_from: Path | None = None
    """The checkpoint to continue from (None: from the first step)."""
    notes: list[str] = field(default_factory=list)
    """What was decided and done, for the log and the terminal."""


def is_run_folder(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FOLDER_MARKERS)


def previous_document(folder: Path) -> dict[str, Any] | None:
    """The folder's ``resolved.json``, or None."""
    try:
        return json.loads((folder / "resolved.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def recipe_differences(old: Any, new: Any, prefix: str = "", only_in_one: list[str] | None = None) -> list[str]:
    """Dotted keys whose values differ between two resolved recipes.

    A key that only one of them has (an option added or removed by another recipetune version) is not a difference:
    it goes to ``only_in_one`` when given.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if (key in old) != (key in new):
                if only_in_one is not None:
                    only_in_one.append(path)
                continue
            out += recipe_differences(old[key], new[key], path, only_in_one)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new)):
            out += recipe_differences(a, b, f"{prefix}[{i}]", only_in_one)
        return out
    return [] if old == new else [prefix or "(recipe)"]


def _describe(diffs: list[str], old: dict, new: dict) -> str:
    def value(doc: dict, key: str) -> Any:
        cur: Any = doc
        for part in key.replace("[", ".[").split("."):
            if part.startswith("[") and isinstance(cur, list):
                cur = cur[int(part[1:-1])] if int(part[1:-1]) < len(cur) else None
            elif isinstance(cur, dict):
                cur = cur.get(part)
            else:
                return None
        return cur

    shown = [f"{d} ({value(old, d)!r} -> {value(new, d)!r})" for d in diffs[:6]]
    return ", ".join(shown) + (f" and {len(diffs) - 6} more" if len(diffs) > 6 else "")


def keep_metrics_until(metrics_path: Path, step: int) -> int:
    """Drop metric lines after ``step``, any line cut short by a kill, and the end-of-training summary of an
    interrupted session (``train_runtime``: the resumed run writes its own). Returns how many lines were dropped."""
    if not metrics_path.exists():
        return 0
    kept, dropped = [], 0
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = int(row["step"]) <= step and "train_runtime" not in row
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic.write_text(metrics_path, "".join(line + "\n" for line in kept))
    return dropped


def _remove_contents(folder: Path) -> list[str]:
    removed = []
    for entry in sorted(folder.iterdir()):
        is_folder = entry.is_dir() and not entry.is_symlink()
        if is_folder:
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry.name + ("/" if is_folder else ""))
    return removed


def open_run_folder(folder: Path, resolved_recipe: dict[str, Any], mode: Mode = "auto") -> Opening:
    """Decide how a run starts in ``folder`` (see the module docstring); raise :class:`UserError` to refuse."""
    folder = Path(folder)
    opening = Opening()
    entries = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if not entries:
        if mode == "resume":
            opening.notes.append(f"--resume: {folder} holds no run yet; starting a new one")
        return opening
    if not is_run_folder(folder):
        listed = ", ".join(entries[:5]) + (" ..." if len(entries) > 5 else "")
        raise UserError(f"{folder} is not empty and is not a run folder (it holds {listed}); "
                        "choose an empty or new --output-dir: recipetune never writes into or deletes such a folder")
    if mode == "fresh":
        removed = _remove_contents(folder)
        opening.notes.append(f"--fresh: removed the earlier run in {folder}: {', '.join(removed)}")
        return opening

    previous = previous_document(folder) or {}
    ckpt_root = folder / "checkpoints"
    newest = checkpoints.newest_complete(ckpt_root)
    where = f"checkpoint {newest.name}" if newest else "no complete checkpoint"
    if previous.get("finished") and mode == "auto":
        raise UserError(f"{folder} holds a finished run ({where}; report.md written); rerun with --fresh to start "
                        "over there, give another --output-dir, or --resume to continue training from its last checkpoint")
    version_keys: list[str] = []
    diffs = (recipe_differences(previous.get("recipe"), resolved_recipe, only_in_one=version_keys)
             if previous.get("recipe") is not None else [])
    if version_keys:
        opening.notes.append("options only one of the two recipes has (another recipetune version?): "
                             + ", ".join(version_keys[:8]))
    if diffs:
        described = _describe(diffs, previous.get("recipe") or {}, resolved_recipe)
        if mode == "auto":
            raise UserError(f"{folder} holds a run of a different recipe: {described}. Rerun with --fresh to start "
                            "over there, give another --output-dir, or --resume to continue that run with the changed "
                            "recipe")
        opening.notes.append(f"--resume with a changed recipe: {described}")

    discarded = checkpoints.discard_incomplete(ckpt_root)
    if discarded:
        opening.notes.append("removed incomplete checkpoint(s) (the run stopped while writing them): "
                             + ", ".join(p.name for p in discarded))
    opening.resume, opening.resume_from = True, newest
    step = checkpoints.checkpoint_step(newest) if newest else 0
    dropped = keep_metrics_until(folder / "metrics.jsonl", step)
    opening.notes.append(f"resuming the run in {folder} from " + (f"{newest.name} (step {step})" if newest else
                         "the first step (it has no complete checkpoint)")
                         + (f"; dropped {dropped} metric line(s) past step {step}" if dropped else ""))
    return opening


def opening_of_other_rank(folder: Path, mode: Mode) -> Opening:
    """What rank 0's :func:`open_run_folder` decides, read without changing the folder (ranks other than 0)."""
    folder = Path(folder)
    if mode == "fresh" or not folder.is_dir() or not is_run_folder(folder):
        return Opening()
    return Opening(resume=True, resume_from=checkpoints.newest_complete(folder / "checkpoints"))
