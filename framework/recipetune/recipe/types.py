"""Field types for component options whose values are paths in a recipe.

Relative paths resolve against the folder of the recipe file (passed as the
validation context ``{"recipe_dir": ...}``), so a recipe runs the same from
any working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, ValidationInfo


def _recipe_dir(info: ValidationInfo) -> Path:
    ctx = info.context or {}
    return Path(ctx.get("recipe_dir") or os.getcwd())


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    value = Path(os.path.expanduser(str(value)))
    return value if value.is_absolute() else (_recipe_dir(info) / value).resolve()


def _resolve_if_local(value: str, info: ValidationInfo) -> str:
    """Hub ids (``org/name``) stay as they are; local paths become absolute."""
    if "://" in value or value.startswith("pkg:"):
        return value
    looks_local = value.startswith((".", "/", "~")) or value.endswith((".json", ".jsonl", ".parquet", ".csv", ".gguf"))
    candidate = Path(os.path.expanduser(value))
    if not candidate.is_absolute():
        candidate = _recipe_dir(info) / candidate
    if looks_local or candidate.exists():
        return str(candidate.resolve())
    return value


RecipePath = Annotated[Path, AfterValidator(_resolve_path)]
"""A local path, relative to the recipe file."""

PathOrHubId = Annotated[str, AfterValidator(_resolve_if_local)]
"""A Hugging Face Hub id (``org/name``) or a local path relative to the recipe file."""
