"""Where each key of a TOML recipe is written: key path -> (line, column).

``tomllib`` keeps no positions, so this small scanner reads the text the way
recipe TOML is written: ``[table]`` and ``[[array]]`` headers, ``key = value``
lines (dotted and quoted keys too), and values that span lines (arrays, inline
tables, multi-line strings), which it skips over. Paths are tuples such as
``("train", "learning_rate")`` or ``("export", 0, "use")``.
"""

from __future__ import annotations

import re
from typing import Union

PathKey = tuple[Union[str, int], ...]

_BARE = r'[A-Za-z0-9_\-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY = rf"(?:{_BARE})(?:\s*\.\s*(?:{_BARE}))*"
_ARRAY_HEADER = re.compile(rf"^\s*\[\[\s*({_KEY})\s*\]\]")
_TABLE_HEADER = re.compile(rf"^\s*\[\s*({_KEY})\s*\]")
_KEY_VALUE = re.compile(rf"^(\s*)({_KEY})\s*=\s*(.*)$")


def split_key(text: str) -> tuple[str, ...]:
    """``a."b.c".d`` -> ``("a", "b.c", "d")``."""
    return tuple(m.strip("\"'") for m in re.findall(_BARE, text))


def _value_tail_state(value: str, depth: int, in_ml: str | None) -> tuple[int, str | None]:
    """Track bracket depth and multi-line strings across a value's text."""
    i = 0
    while i < len(value):
        if in_ml:
            end = value.find(in_ml, i)
            if end < 0:
                return depth, in_ml
            i, in_ml = end + 3, None
            continue
        ch = value[i]
        if value.startswith('"""', i) or value.startswith("'''", i):
            in_ml = value[i:i + 3]
            i += 3
            continue
        if ch in "\"'":
            end = value.find(ch, i + 1)
            while ch == '"' and end > 0 and value[end - 1] == "\\":
                end = value.find(ch, end + 1)
            i = len(value) if end < 0 else end + 1
            continue
        if ch == "#":
            break
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        i += 1
    return depth, in_ml


def index_positions(text: str, duplicates: list | None = None) -> dict[PathKey, tuple[int, int]]:
    """Map every table and key of ``text`` to its 1-based (line, column).

    ``duplicates``, when given, receives ``(path, first (line, column), again (line, column))`` for each
    key or ``[table]`` written twice (TOML refuses them; tomllib does not say which key or where).
    """
    positions: dict[PathKey, tuple[int, int]] = {}
    table: PathKey = ()
    array_counts: dict[tuple[str, ...], int] = {}
    depth, in_ml = 0, None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if in_ml or depth > 0:
            depth, in_ml = _value_tail_state(line, depth, in_ml)
            continue
        if m := _ARRAY_HEADER.match(line):
            key = split_key(m.group(1))
            index = array_counts.get(key, 0)
            array_counts[key] = index + 1
            # nested arrays of tables restart their sub-counters
            for other in [k for k in array_counts if len(k) > len(key) and k[: len(key)] == key]:
                del array_counts[other]
            table = key + (index,)
            positions.setdefault(key, (lineno, 1))
            positions[table] = (lineno, 1)
            continue
        if m := _TABLE_HEADER.match(line):
            table = _under_arrays(split_key(m.group(1)), array_counts)
            if duplicates is not None and table in positions:
                duplicates.append((table, positions[table], (lineno, 1)))
            positions[table] = (lineno, 1)
            continue
        if m := _KEY_VALUE.match(line):
            path = table + split_key(m.group(2))
            if duplicates is not None and path in positions:
                duplicates.append((path, positions[path], (lineno, len(m.group(1)) + 1)))
            positions[path] = (lineno, len(m.group(1)) + 1)
            depth, in_ml = _value_tail_state(m.group(3), 0, None)
    return positions


def _under_arrays(key: tuple[str, ...], array_counts: dict[tuple[str, ...], int]) -> PathKey:
    """``[export.options]`` after ``[[export]]`` belongs to the last export entry."""
    out: list[str | int] = []
    for i, part in enumerate(key):
        out.append(part)
        prefix = key[: i + 1]
        if prefix in array_counts and i < len(key) - 1:
            out.append(array_counts[prefix] - 1)
    return tuple(out)


def locate(positions: dict[PathKey, tuple[int, int]], path: PathKey) -> tuple[int, int] | None:
    """The position of ``path``, or of its nearest written ancestor."""
    path = tuple(path)
    while path:
        if path in positions:
            return positions[path]
        path = path[:-1]
    return None


def dotted(path: PathKey) -> str:
    """``("export", 0, "use")`` -> ``export[0].use``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out
