"""Checkpoint folders of a run (``checkpoints/checkpoint-<step>/``): which are complete, which to keep.

A trainer (transformers' ``Trainer``) writes a checkpoint file by file; a process killed half-way leaves a folder
that looks like a checkpoint and is not one. So a checkpoint counts only once a manifest is written *after* all its
files: ``recipetune-checkpoint.json`` lists every file with its size, and is itself written atomically (a temporary
file, fsync, rename). A folder without a manifest, or whose files no longer match it (a deletion that was killed
half-way), is incomplete: it is never resumed from, and :func:`discard_incomplete` removes it.

Deleting renames the folder to ``.deleting-checkpoint-<step>`` first (one atomic rename), so a killed deletion
never leaves a ``checkpoint-<step>`` folder with files missing; the leftovers are removed with the incomplete ones.

Checkpoints written before manifests existed (a run folder of an older recipetune: no checkpoint in it has one)
count as complete when their ``trainer_state.json`` -- the file transformers writes last -- reads back with the
folder's step. Nothing here imports torch: ``recipe run`` decides how to open a run folder before any heavy
library loads.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from . import atomic

MANIFEST = "recipetune-checkpoint.json"
"""The file that makes a checkpoint folder complete."""

_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(folder: Path) -> int | None:
    """The step of a ``checkpoint-<step>`` folder, or None for another name."""
    match = _CHECKPOINT_NAME.match(Path(folder).name)
    return int(match.group(1)) if match else None


def checkpoint_folders(root: Path) -> list[Path]:
    """Every ``checkpoint-<step>`` folder under ``root``, complete or not, by step."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p))


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def mark_complete(folder: Path, step: int, extra: dict | None = None) -> Path:
    """Flush every file of ``folder`` to disk, then write its manifest (atomically). Returns the manifest path."""
    folder = Path(folder)
    files: dict[str, int] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST and not path.name.startswith("."):
            _fsync_file(path)
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
    for sub in {folder, *(p.parent for p in folder.rglob("*") if p.is_file())}:
        _fsync_dir(sub)
    manifest = atomic.write_json(folder / MANIFEST, {"step": step, "files": files, **(extra or {})})
    _fsync_dir(folder)
    return manifest


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` has a manifest and every file it lists, at its size."""
    manifest = read_manifest(folder)
    if not manifest or not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        return False
    folder = Path(folder)
    for name, size in manifest["files"].items():
        path = folder / name
        try:
            if path.stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def _complete_without_manifest(folder: Path) -> bool:
    """A checkpoint of a recipetune without manifests: its ``trainer_state.json`` (written last) is whole."""
    try:
        state = json.loads((Path(folder) / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("global_step") == checkpoint_step(folder)


def complete_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoints under ``root``, oldest first."""
    folders = checkpoint_folders(root)
    if folders and not any((p / MANIFEST).exists() for p in folders):  # written before manifests existed
        return [p for p in folders if _complete_without_manifest(p)]
    return [p for p in folders if is_complete(p)]


def newest_complete(root: Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    done = complete_checkpoints(root)
    return done[-1] if done else None


def remove_checkpoint(folder: Path) -> None:
    """Delete a checkpoint folder: renamed away first, so a killed deletion never leaves a half-deleted checkpoint."""
    folder = Path(folder)
    doomed = folder.with_name(f".deleting-{folder.name}")
    try:
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(folder, doomed)
    except OSError:
        (folder / MANIFEST).unlink(missing_ok=True)
        doomed = folder
    shutil.rmtree(doomed, ignore_errors=True)


def discard_incomplete(root: Path) -> list[Path]:
    """Remove the checkpoint folders under ``root`` that are not complete (and stray temporary files).

    Returns the folders removed. Called when a run folder is opened again, before training resumes.
    """
    complete = set(complete_checkpoints(root))
    removed = []
    for folder in checkpoint_folders(root):
        if folder not in complete:
            remove_checkpoint(folder)
            removed.append(folder)
    if Path(root).is_dir():
        for leftover in Path(root).glob(".deleting-checkpoint-*"):  # a deletion that was killed
            shutil.rmtree(leftover, ignore_errors=True)
    return removed


def rotate(root: Path, keep: int, protect: tuple[Path | str | None, ...] = ()) -> list[Path]:
    """Delete the oldest complete checkpoints so that at most ``keep`` remain, never one in ``protect``.

    The newest complete checkpoint is always kept. Returns the folders removed.
    """
    done = complete_checkpoints(root)
    protected = {Path(p).resolve() for p in protect if p}
    if done:
        protected.add(done[-1].resolve())
    removed = []
    surplus = len(done) - keep
    for folder in done:
        if surplus <= 0:
            break
        if folder.resolve() in protected:
            continue
        remove_checkpoint(folder)
        removed.append(folder)
        surplus -= 1
    return removed
