"""Dataset format ``sharegpt``: ``conversations`` of ``{from, value}`` (or ``{role, content}``) turns."""

from __future__ import annotations

from typing import Any

from recipetune import DatasetFormat, Options, hookimpl

ROLE_NAMES = {
    "system": "system",
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
}


class ShareGPTOptions(Options):
    column: str = "conversations"
    """Column holding the list of turns (FineTome-100k: ``conversations``)."""


class ShareGPT(DatasetFormat):
    """ShareGPT rows: turns with ``from``/``value`` (human, gpt, system) or ``role``/``content``; system turns kept."""

    name = "sharegpt"
    Options = ShareGPTOptions

    def detect(self, row: dict[str, Any]) -> bool:
        turns = row.get(self.options.column)
        return isinstance(turns, list) and bool(turns) and isinstance(turns[0], dict) and (
            "from" in turns[0] or "role" in turns[0])

    def standardize(self, row: dict[str, Any]) -> list[dict[str, str]] | None:
        turns = row.get(self.options.column)
        if not isinstance(turns, list) or not turns:
            return None
        out = []
        for turn in turns:
            if not isinstance(turn, dict):
                return None
            role = ROLE_NAMES.get(str(turn.get("from", turn.get("role", ""))).lower())
            content = turn.get("value", turn.get("content"))
            if role is None or not isinstance(content, str):
                return None
            out.append({"role": role, "content": content})
        if not any(m["role"] == "assistant" for m in out):
            return None
        return out


@hookimpl
def register_dataset_formats(register):
    register(ShareGPT)
