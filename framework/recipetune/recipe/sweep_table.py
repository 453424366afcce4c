"""``[sweep]``: the grid that ``recipe sweep`` runs (``recipe run`` ignores the table).

It lives in the core so that a recipe holding it validates like any other; the command itself, and the check of
every grid value against the components' options, are the ``sweep`` plugin (``recipetune_plugins.sweep``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .types import RecipePath


class SweepTable(BaseModel):
    """``[sweep]`` with ``[sweep.grid]``: one run per combination of the grid's values (``docs/evaluation-and-sweeps.md``)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, strict=True)

    grid: dict[str, list[Any]] = Field(default_factory=dict)
    """Dotted recipe keys and the values each one takes, e.g. ``"train.learning_rate" = [1e-4, 2e-4]`` (quote the
    key); ``recipe sweep`` runs every combination. ``--grid KEY=V1,V2`` on the command line replaces a key's values."""
    output_dir: RecipePath | None = None
    """The sweep's folder (relative to the recipe file): one run folder per combination, ``sweep.md``/``.csv``/
    ``.json`` and ``loss_per_epoch.png``. Default: ``runs/<name>-sweep`` under the working directory."""
