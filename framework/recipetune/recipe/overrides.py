"""Command-line overrides: ``train.max_steps=10``, ``adapt.target_modules=["q_proj","v_proj"]``.

The value is read as a TOML value (so numbers, booleans, arrays and quoted
strings have their types); anything that is not valid TOML is taken as a plain
string, so ``load.model=HuggingFaceTB/SmolLM2-135M`` needs no quotes.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from typing import Any

from ..problems import Problem
from .positions import PathKey, dotted

_SEGMENT = re.compile(r"([A-Za-z0-9_\-]+)|\[(\d+)\]")


@dataclass
class Override:
    text: str
    path: PathKey
    value: Any


def parse_path(key: str) -> PathKey | None:
    parts: list[str | int] = []
    for chunk in key.split("."):
        pos = 0
        if not chunk:
            return None
        for m in _SEGMENT.finditer(chunk):
            if m.start() != pos:
                return None
            pos = m.end()
            if m.group(2) is not None:
                parts.append(int(m.group(2)))
            elif m.group(1).isdigit() and parts:
                parts.append(int(m.group(1)))
            else:
                parts.append(m.group(1))
        if pos != len(chunk):
            return None
    return tuple(parts)


_BARE_LIST = re.compile(r"^\[\s*(?:[A-Za-z0-9_.\-/:]+\s*(?:,\s*[A-Za-z0-9_.\-/:]+\s*)*,?)?\]$")


def parse_value(text: str) -> Any:
    """A TOML value; ``[q_proj,v_proj]`` (what the shell leaves of ``["q_proj","v_proj"]`` unquoted) is a list of
    strings; anything else that is not TOML is a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if _BARE_LIST.match(text):
            return [item.strip() for item in text.strip()[1:-1].split(",") if item.strip()]
        return text


def parse_overrides(items: list[str]) -> tuple[list[Override], list[Problem]]:
    overrides, problems = [], []
    for item in items:
        if "=" not in item:
            problems.append(Problem("", "expected KEY=VALUE, such as train.max_steps=10", override=item))
            continue
        key, _, raw = item.partition("=")
        path = parse_path(key.strip())
        if not path:
            problems.append(Problem("", f"{key!r} is not a dotted key such as train.max_steps or export[0].quantization", override=item))
            continue
        overrides.append(Override(item, path, parse_value(raw.strip())))
    return overrides, problems


def apply_overrides(data: dict[str, Any], overrides: list[Override]) -> list[Problem]:
    problems = []
    for ov in overrides:
        node: Any = data
        for i, part in enumerate(ov.path[:-1]):
            nxt = ov.path[i + 1]
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    problems.append(Problem(dotted(ov.path[: i + 1]), f"the recipe has no entry {dotted(ov.path[: i + 1])}", override=ov.text))
                    break
                node = node[part]
            else:
                if not isinstance(node, dict):
                    problems.append(Problem(dotted(ov.path[:i]), f"{dotted(ov.path[:i])} is not a table", override=ov.text))
                    break
                if part not in node:
                    node[part] = [] if isinstance(nxt, int) else {}
                node = node[part]
        else:
            last = ov.path[-1]
            if isinstance(last, int):
                if not isinstance(node, list) or last >= len(node):
                    problems.append(Problem(dotted(ov.path), f"the recipe has no entry {dotted(ov.path)}", override=ov.text))
                    continue
                node[last] = ov.value
            elif isinstance(node, dict):
                node[last] = ov.value
            else:
                problems.append(Problem(dotted(ov.path[:-1]), f"{dotted(ov.path[:-1])} is not a table", override=ov.text))
    return problems
