"""Row operations (``[[format.ops]]``), applied in the order the recipe writes them.

Each operation is one table with ``op = "..."`` and that operation's keys::

    [[format.ops]]
    op = "filter"            # keep rows whose column has this value
    column = "language"
    equals = "English"

    [[format.ops]]
    op = "system_prompt"     # inject a system message, or replace the one there
    content = "You are Quill."
    mode = "replace"

Operations see a record per row: the raw row (its columns, for ``filter``) and
the conversation the standardizer made of it (for the others). Rows an
operation removes are counted under its reason (``filtered``, ``empty``,
``duplicate``, ``limit``).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

OP_KEYS: dict[str, dict[str, str]] = {
    "system_prompt": {"content": "the system message text", "mode": '"replace" (default) or "inject" (only where none)'},
    "filter": {"column": "the row's column to test", "equals": "keep rows whose value equals this",
               "not_equals": "drop rows whose value equals this", "in": "keep rows whose value is in this list",
               "not_in": "drop rows whose value is in this list"},
    "drop_empty": {},
    "dedupe": {"by": '"conversation" (default) or "prompt" (the turns before the first answer)'},
    "shuffle": {"seed": "shuffle seed (default: the recipe's seed)"},
    "limit": {"n": "keep the first n rows"},
}
"""Each operation's keys (besides ``op``), with their meaning: the docs and the error messages use it."""


class Op(BaseModel):
    """One ``[[format.ops]]`` table. ``op`` names the operation; the other keys are its settings."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, populate_by_name=True, strict=True)

    op: Literal["system_prompt", "filter", "drop_empty", "dedupe", "shuffle", "limit"]
    """The operation: system_prompt, filter, drop_empty, dedupe, shuffle or limit."""
    content: str | None = None
    """system_prompt: the system message."""
    mode: Literal["replace", "inject"] = "replace"
    """system_prompt: ``replace`` any system message, or ``inject`` one only where there is none."""
    column: str | None = None
    """filter: the column of the raw row to test."""
    equals: Any = None
    """filter: keep rows whose column equals this value."""
    not_equals: Any = None
    """filter: drop rows whose column equals this value."""
    in_: list[Any] | None = Field(default=None, alias="in")
    """filter (written ``in``): keep rows whose column is one of these values."""
    not_in: list[Any] | None = None
    """filter: drop rows whose column is one of these values."""
    by: Literal["conversation", "prompt"] = "conversation"
    """dedupe: what makes two rows the same."""
    seed: int | None = None
    """shuffle: seed (default: the recipe's ``seed``)."""
    n: int | None = None
    """limit: how many rows to keep."""

    @model_validator(mode="after")
    def _check(self) -> "Op":
        allowed = set(OP_KEYS[self.op]) | {"op"}
        given = {("in" if k == "in_" else k) for k in self.model_fields_set}
        extra = sorted(given - allowed)
        if extra:
            keys = ", ".join(OP_KEYS[self.op]) or "no other keys"
            raise ValueError(f'op "{self.op}" does not take {", ".join(extra)}; it takes {keys}')
        if self.op == "system_prompt" and self.content is None:
            raise ValueError('op "system_prompt" needs content = "..."')
        if self.op == "filter":
            if not self.column:
                raise ValueError('op "filter" needs column = "..."')
            tests = [k for k in ("equals", "not_equals", "in", "not_in") if k in given]
            if len(tests) != 1:
                raise ValueError('op "filter" needs exactly one of equals, not_equals, in, not_in')
        if self.op == "limit" and (self.n is None or self.n < 1):
            raise ValueError('op "limit" needs n = a positive number of rows')
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        """Only the keys the operation takes (``in`` spelled as in the recipe)."""
        data = handler(self)
        keys = {"op", *OP_KEYS[self.op]}
        return {("in" if k == "in_" else k): v for k, v in data.items() if ("in" if k == "in_" else k) in keys
                and (v is not None or k in self.model_fields_set)}

    def describe(self) -> str:
        if self.op == "system_prompt":
            return f"system_prompt ({self.mode}): {self.content[:40]!r}"
        if self.op == "filter":
            for key in ("equals", "not_equals", "in_", "not_in"):
                value = getattr(self, key)
                if value is not None:
                    return f"filter {self.column} {key.rstrip('_')} {value!r}"
        if self.op == "limit":
            return f"limit {self.n}"
        if self.op == "shuffle":
            return f"shuffle (seed {self.seed})" if self.seed is not None else "shuffle"
        if self.op == "dedupe":
            return f"dedupe by {self.by}"
        return self.op


@dataclass
class Record:
    """A row on its way through the operations: the raw row and its conversation."""

    index: int
    row: dict[str, Any]
    messages: list[dict[str, str]]


def describe_row(index: int, row: dict[str, Any], limit: int = 300) -> str:
    """``row N: {...}`` (the row's place in the data as read, 1-based, and its JSON, cut to ``limit``)."""
    import json

    text = json.dumps(row, ensure_ascii=False, default=str)
    return f"row {index + 1}: {text[:limit]}{'...' if len(text) > limit else ''}"


def apply_ops(records: list[Record], ops: list[Op], default_seed: int, dropped: dict[str, int],
              examples: dict[str, str] | None = None) -> list[Record]:
    """Apply ``ops`` in order; count removed rows in ``dropped`` by reason (and keep the first one removed for each
    reason in ``examples``)."""
    for op in ops:
        before = records
        records, reason = _APPLY[op.op](records, op, default_seed)
        if reason and len(records) < len(before):
            dropped[reason] = dropped.get(reason, 0) + len(before) - len(records)
            if examples is not None and reason not in examples:
                kept = {id(rec) for rec in records}
                first = next((rec for rec in before if id(rec) not in kept), None)
                if first is not None:
                    examples[reason] = describe_row(first.index, first.row)
    return records


def _system_prompt(records: list[Record], op: Op, seed: int) -> tuple[list[Record], str | None]:
    for rec in records:
        has = bool(rec.messages) and rec.messages[0]["role"] == "system"
        if has and op.mode == "inject":
            continue
        rest = rec.messages[1:] if has else rec.messages
        rec.messages = [{"role": "system", "content": op.content or ""}, *rest]
    return records, None


_MISSING = object()


def _filter(records: list[Record], op: Op, seed: int) -> tuple[list[Record], str | None]:
    column = op.column or ""
    if records and all(column not in rec.row for rec in records[:100]):
        from ..problems import UserError

        columns = ", ".join(sorted(records[0].row)) or "(none)"
        raise UserError(f'format.ops: filter column "{column}" is not in the dataset; its columns are: {columns}')

    def keep(rec: Record) -> bool:
        value = rec.row.get(column, _MISSING)
        if op.equals is not None:
            return value == op.equals
        if op.not_equals is not None:
            return value != op.not_equals
        if op.in_ is not None:
            return value in op.in_
        return value not in (op.not_in or [])

    return [r for r in records if keep(r)], "filtered"


def is_empty(messages: list[dict[str, str]]) -> bool:
    """No assistant turn with text, or a turn with no text at all (an assistant turn that calls tools is not empty)."""
    if not messages:
        return True
    if any(not str(m.get("content") or "").strip() for m in messages
           if m.get("role") != "system" and not m.get("tool_calls")):
        return True
    return not any(m["role"] in ("assistant", "text") for m in messages)


def _drop_empty(records: list[Record], op: Op, seed: int) -> tuple[list[Record], str | None]:
    return [r for r in records if not is_empty(r.messages)], "empty"


def _dedupe(records: list[Record], op: Op, seed: int) -> tuple[list[Record], str | None]:
    seen: set[bytes] = set()
    out = []
    for rec in records:
        messages = rec.messages
        if op.by == "prompt":
            first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
            messages = messages[:first]
        key = hashlib.blake2b(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode(), digest_size=16).digest()
        if key not in seen:
            seen.add(key)
            out.append(rec)
    return out, "duplicate"


def _shuffle(records: list[Record], op: Op, seed: int) -> tuple[list[Record], str | None]:
    records = list(records)
    random.Random(op.seed if op.seed is not None else seed).shuffle(records)
    return records, None


def _limit(records: list[Record], op: Op, seed: int) -> tuple[list[Record], str | None]:
    return records[: op.n], "limit"


_APPLY = {"system_prompt": _system_prompt, "filter": _filter, "drop_empty": _drop_empty, "dedupe": _dedupe,
          "shuffle": _shuffle, "limit": _limit}
