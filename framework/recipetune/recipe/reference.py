"""The recipe reference as Markdown, generated from the installed components' options.

``docs/recipe-reference.md`` is this text for the built-in plugins; a test keeps them equal
(regenerate with ``RECIPETUNE_DISABLE_PLUGIN_AUTOLOAD=1 recipe schema --markdown > docs/recipe-reference.md``).
"""

from __future__ import annotations

import inspect
import json
import re
from typing import Any

from pydantic import BaseModel

from ..components import KIND_LABELS
from ..registry import Registry
from .model import DatasetMember, DistributedTable, FormatTable, RecipeHeader
from .sweep_table import SweepTable

SECTIONS = [
    ("backend", "[load]", "Stage 1: load the model and tokenizer."),
    ("adapter", "[adapt]", "Stage 2: make the model trainable. Leave the table out to train every parameter."),
    ("dataset_format", "[format] standardizer", "How raw rows become conversations: `standardizer = \"name\"` or `standardizer = {use = \"name\", ...}`."),
    ("chat_template", "[format] chat_template", "How conversations become text: `chat_template = \"name\"` or a table with `use`."),
    ("trainer", "[train]", "Stage 4: train."),
    ("reporter", "[[report]]", "Stage 5: blocks of report.md (any number, in order)."),
    ("exporter", "[[export]]", "Stage 6: artifacts (any number, in order)."),
]


def _default(field) -> str:
    if field.is_required():
        return "**required**"
    value: Any = field.default
    if field.default_factory is not None:
        value = field.default_factory()
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        return f"`{json.dumps(value, default=str)}`"
    except TypeError:  # pragma: no cover
        return f"`{value}`"


def _type(field) -> str:
    text = str(field.annotation).replace("typing.", "").replace("pathlib.", "").replace("<class '", "").replace("'>", "")
    text = re.sub(r"Annotated\[(\w+), (?:Strict\(strict=False\), )?AfterValidator\(func=<function \w+ at 0x[0-9a-f]+>\)\]", r"\1", text)
    return text.replace("|", "\\|")


def options_table(model: type[BaseModel]) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        doc = (field.description or "").replace("\n", " ").replace("|", "\\|")
        rows.append(f"| `{name}` | {_type(field)} | {_default(field)} | {doc} |")
    return rows if len(rows) > 2 else ["(no options)"]


def reference_markdown(registry: Registry) -> str:
    lines = ["# Recipe reference", "",
             "Generated from the installed components' options (`recipe schema --markdown`); "
             "`recipe schema` prints the same as JSON schema. Unknown keys are errors everywhere.", "",
             "## Top level", "", *options_table(RecipeHeader), "",
             "## [format]", "", FormatTable.__doc__.strip(), "", *options_table(FormatTable), "",
             "### [[format.datasets]]", "", DatasetMember.__doc__.strip(), "", *options_table(DatasetMember), "",
             "## [distributed]", "", inspect.cleandoc(DistributedTable.__doc__), "", *options_table(DistributedTable), "",
             "## [sweep]", "", inspect.cleandoc(SweepTable.__doc__), "", *options_table(SweepTable), ""]
    for kind, title, intro in SECTIONS:
        lines += [f"## {title}", "", intro, ""]
        for entry in registry.entries(kind):
            doc = (entry.cls.__doc__ or "").strip().splitlines()
            lines += [f"### {KIND_LABELS[kind]} `{entry.name}`", "",
                      f"{doc[0] if doc else ''} (plugin `{entry.plugin}`)", "", *options_table(entry.cls.Options), ""]
    return "\n".join(lines).rstrip() + "\n"
