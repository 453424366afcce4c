"""Where each key of a TOML recipe is written: key path -> (line, column).

``tomllib`` keeps no positions, so this small scanner reads the text the way
recipe TOML is written: ``[table]`` and ``[[array]]`` headers, ``key = value``
lines (dotted and quoted keys too), the keys of inline tables (also inside
arrays), and values that span lines (arrays, multi-line strings). Paths are tuples such as
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
_INLINE_KEY = re.compile(rf"({_KEY})\s*=")


def split_key(text: str) -> tuple[str, ...]:
    """``a."b.c".d`` -> ``("a", "b.c", "d")``."""
    return tuple(m.strip("\"'") for m in re.findall(_BARE, text))


class _ValueScanner:
    """Walks a value that may span lines and records the keys of its inline tables.

    ``{ use = "alpaca", output = "reply" }`` after ``standardizer =`` indexes
    ``standardizer.use`` and ``standardizer.output`` at their columns; inline tables
    inside arrays are indexed by their place in the array (``datasets[1].path``).
    Strings (multi-line too) and comments are skipped, so brackets inside them count not.
    """

    def __init__(self, positions: dict[PathKey, tuple[int, int]]) -> None:
        self.positions = positions
        self.frames: list[list] = []  # ["table", path] or ["array", path, index]
        self.in_ml: str | None = None
        self.value_path: PathKey = ()
        self.expect_key = False

    @property
    def busy(self) -> bool:
        """True while a value opened on an earlier line is still open."""
        return bool(self.frames) or self.in_ml is not None

    def start(self, path: PathKey, value: str, lineno: int, column: int) -> None:
        """Begin the value of ``path`` written at ``column`` (0-based) of line ``lineno``."""
        self.frames, self.in_ml, self.value_path, self.expect_key = [], None, path, False
        self.feed(value, lineno, column)

    def feed(self, text: str, lineno: int, column: int = 0) -> None:
        """Scan one line (or the rest of one) of the value."""
        i = 0
        while i < len(text):
            if self.in_ml:
                end = text.find(self.in_ml, i)
                if end < 0:
                    return
                i, self.in_ml = end + 3, None
                continue
            ch = text[i]
            if ch.isspace():
                i += 1
                continue
            if ch == "#":
                return
            if self.expect_key:
                self.expect_key = False
                if m := _INLINE_KEY.match(text, i):
                    path = self.frames[-1][1] + split_key(m.group(1))
                    self.positions[path] = (lineno, column + i + 1)
                    self.value_path = path
                    i = m.end()
                    continue
            if text.startswith('"""', i) or text.startswith("'''", i):
                self.in_ml = text[i:i + 3]
                i += 3
                continue
            if ch in "\"'":
                end = text.find(ch, i + 1)
                while ch == '"' and end > 0 and _escaped(text, end):
                    end = text.find(ch, end + 1)
                i = len(text) if end < 0 else end + 1
                continue
            if ch in "[{":
                path = self._element_path()
                if ch == "{":
                    self.positions.setdefault(path, (lineno, column + i + 1))
                    self.frames.append(["table", path])
                    self.expect_key = True
                else:
                    self.frames.append(["array", path, 0])
            elif ch in "]}":
                if self.frames:
                    self.frames.pop()
            elif ch == "," and self.frames:
                if self.frames[-1][0] == "table":
                    self.expect_key = True
                else:
                    self.frames[-1][2] += 1
            i += 1

    def _element_path(self) -> PathKey:
        """The path a value starting here gets: the key just read, or the array's next place."""
        if self.frames and self.frames[-1][0] == "array":
            return self.frames[-1][1] + (self.frames[-1][2],)
        return self.value_path


def _escaped(text: str, index: int) -> bool:
    """Whether the character at ``index`` follows an odd number of backslashes."""
    count = 0
    while index - count - 1 >= 0 and text[index - count - 1] == "\\":
        count += 1
    return count % 2 == 1


def index_positions(text: str, duplicates: list | None = None) -> dict[PathKey, tuple[int, int]]:
    """Map every table and key of ``text`` to its 1-based (line, column).

    ``duplicates``, when given, receives ``(path, first (line, column), again (line, column))`` for each
    key or ``[table]`` written twice (TOML refuses them; tomllib does not say which key or where).
    """
    positions: dict[PathKey, tuple[int, int]] = {}
    table: PathKey = ()
    array_counts: dict[PathKey, int] = {}  # an array of tables (its path under earlier arrays) -> entries so far
    value = _ValueScanner(positions)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if value.busy:
            value.feed(line, lineno)
            continue
        if m := _ARRAY_HEADER.match(line):
            # [[format.datasets.ops]] belongs to the last [[format.datasets]] entry
            key = _under_arrays(split_key(m.group(1)), array_counts)
            index = array_counts.get(key, 0)
            array_counts[key] = index + 1
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
            value.start(path, m.group(3), lineno, m.start(3))
    return positions


def _under_arrays(key: tuple[str, ...], array_counts: dict[PathKey, int]) -> PathKey:
    """``[export.options]`` after ``[[export]]`` belongs to the last export entry."""
    out: list[str | int] = []
    for i, part in enumerate(key):
        out.append(part)
        prefix = tuple(out)
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
