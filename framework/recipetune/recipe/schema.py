"""JSON schema of recipes for the installed components (``recipe schema``)."""

from __future__ import annotations

from typing import Any

from ..components import KIND_LABELS
from ..registry import Registry
from .model import DistributedTable, FormatTable, RecipeHeader


def _component_schema(registry: Registry, kind: str) -> dict[str, Any]:
    choices = []
    for entry in registry.entries(kind):
        schema = entry.cls.Options.model_json_schema()
        props = {"use": {"const": entry.name, "description": f"{KIND_LABELS[kind]} {entry.name!r} (plugin {entry.plugin})"}}
        props.update(schema.get("properties", {}))
        choice = {"type": "object", "title": f"{KIND_LABELS[kind]} {entry.name}", "properties": props,
                  "required": ["use", *schema.get("required", [])], "additionalProperties": False}
        if entry.cls.__doc__:
            choice["description"] = entry.cls.__doc__.strip().splitlines()[0]
        if "$defs" in schema:
            choice["$defs"] = schema["$defs"]
        choices.append(choice)
    return {"oneOf": choices}


def recipe_schema(registry: Registry) -> dict[str, Any]:
    header = RecipeHeader.model_json_schema()
    fmt = FormatTable.model_json_schema()
    fmt["properties"]["standardizer"] = {"anyOf": [{"enum": registry.names("dataset_format")}, _component_schema(registry, "dataset_format")],
                                         "description": fmt["properties"]["standardizer"].get("description", "")}
    fmt["properties"]["chat_template"] = {"anyOf": [{"enum": registry.names("chat_template")}, _component_schema(registry, "chat_template")],
                                          "description": fmt["properties"]["chat_template"].get("description", "")}
    props = dict(header["properties"])
    props["load"] = _component_schema(registry, "backend")
    props["adapt"] = _component_schema(registry, "adapter")
    props["format"] = fmt
    props["distributed"] = DistributedTable.model_json_schema()
    props["train"] = _component_schema(registry, "trainer")
    props["report"] = {"type": "array", "items": _component_schema(registry, "reporter")}
    props["export"] = {"type": "array", "items": _component_schema(registry, "exporter")}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "recipetune recipe",
        "type": "object",
        "properties": props,
        "required": ["name", "load"],
        "additionalProperties": False,
    }
