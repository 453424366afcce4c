"""Dataset formats: turn one raw row into a conversation (``[format] standardizer``).

``sharegpt``          ``conversations`` of ``{from, value}`` turns (FineTome, ShareGPT, SlimOrca)
``messages``          OpenAI-style ``messages`` of ``{role, content}`` turns
``alpaca``            ``instruction`` / ``input`` / ``output`` columns
``prompt_completion`` ``prompt`` / ``completion`` columns (strings or message lists)
``text``              raw ``text`` for continued pretraining: no chat template, loss on every token
``auto``              detects one of the above from the first rows and says which it chose

Every column name is an option, so data with other names needs no conversion:
``standardizer = { use = "alpaca", instruction = "question", output = "answer" }``.
A row that cannot be read returns ``None`` and is counted as ``malformed``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from recipetune import DatasetFormat, Options, UserError, hookimpl

RoleMap = dict[str, Literal["system", "user", "assistant", "tool"]]
"""Extra speaker names and the role each stands for."""

ROLE_NAMES = {
    "system": "system",
    "human": "user", "user": "user", "prompter": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
    "model": "assistant",
    "tool": "tool", "ipython": "tool", "observation": "tool",
}
"""Role spellings found in the wild -> system, user, assistant, tool (a tool's result)."""

TEXT_ROLE = "text"
"""A conversation ``[{"role": "text", "content": ...}]`` is raw text: the pipeline renders no template for it."""

FUNCTION_CALL_ROLE = "function_call"
"""LLaMA-Factory's ShareGPT speaker for an assistant turn that calls tools (its value: the call as JSON)."""

TRAIN_KEYS = ("train", "training", "weight")
"""Per-turn keys that decide whether an assistant turn is trained (Axolotl's ``training`` / ``weight``)."""

_BAD = object()


def _train_flag(turn: dict[str, Any]) -> Any:
    """``True``/``False`` from a turn's ``train``/``training`` (a boolean) or ``weight`` (0 or 1); ``None`` when the
    turn has none; ``_BAD`` for another value (the row is malformed)."""
    for key in TRAIN_KEYS:
        value = turn.get(key)
        if value is None:
            continue
        if key == "weight" and not isinstance(value, bool) and isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        return value if isinstance(value, bool) else _BAD
    return None


def _json_value(value: Any) -> Any:
    """A JSON text (tool calls, arguments, tools stored as strings) as its value; ``_BAD`` when it is not JSON."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return _BAD


def tool_calls(value: Any) -> list[dict[str, Any]] | None:
    """OpenAI tool calls ``[{id?, type: "function", function: {name, arguments}}]``, with ``arguments`` as an object
    (a JSON string is parsed, as transformers' templates expect a mapping); a flat ``{name, arguments}`` call is
    accepted. ``None`` when they cannot be read."""
    value = _json_value(value)
    if not isinstance(value, list) or not value:
        return None
    out = []
    for call in value:
        if not isinstance(call, dict):
            return None
        function = call.get("function", call)
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return None
        arguments = _json_value(function.get("arguments", function.get("parameters", {})))
        if not isinstance(arguments, dict):
            return None
        clean: dict[str, Any] = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
        if call.get("id") is not None:
            clean = {"id": call["id"], **clean}
        out.append(clean)
    return out


def tools_column(value: Any) -> list[dict[str, Any]] | None | object:
    """A row's tool definitions (a list of JSON schemas, or its JSON text); ``None`` for none; ``_BAD`` otherwise."""
    value = _json_value(value)
    if value is None or value == []:
        return None
    if isinstance(value, list) and all(isinstance(t, dict) for t in value):
        return value
    return _BAD


def _turns(turns: Any, role_key: str, content_key: str, roles: dict[str, str]) -> list[dict[str, Any]] | None:
    """Normalise a list of turn dicts; ``None`` when a turn is unreadable or nothing is answered.

    Assistant turns keep their ``tool_calls`` (OpenAI format) and ``tool`` turns their ``tool_call_id`` / ``name``;
    a ``train``/``training``/``weight`` flag on a turn is kept as ``train``."""
    if not isinstance(turns, list) or not turns:
        return None
    out = []
    for turn in turns:
        if not isinstance(turn, dict):
            return None
        raw_role = turn.get(role_key)
        role = roles.get(str(raw_role).lower()) if raw_role is not None else None
        content = turn.get(content_key)
        message: dict[str, Any] = {"role": role, "content": content}
        if str(raw_role).lower() == FUNCTION_CALL_ROLE:  # LLaMA-Factory: the call as JSON text in the turn's value
            value = _json_value(content)
            calls = tool_calls([value] if isinstance(value, dict) else value)
            if calls is None:
                return None
            message = {"role": "assistant", "content": "", "tool_calls": calls}
        elif role == "assistant" and turn.get("tool_calls"):
            calls = tool_calls(turn["tool_calls"])
            if calls is None or content is not None and not isinstance(content, str):
                return None
            message = {"role": role, "content": content or "", "tool_calls": calls}
        elif role == "tool":
            if not isinstance(content, (str, dict, list)):
                return None
            for key in ("tool_call_id", "name"):
                if turn.get(key) is not None:
                    message[key] = turn[key]
        elif role is None or not isinstance(content, str):
            return None
        flag = _train_flag(turn)
        if flag is _BAD:
            return None
        if flag is not None:
            message["train"] = flag
        out.append(message)
    if not any(m["role"] == "assistant" for m in out):
        return None
    return out


class ShareGPTOptions(Options):
    column: str = "conversations"
    """Column holding the list of turns (FineTome-100k: ``conversations``)."""
    role_key: str = "from"
    """Key of a turn's speaker (``role`` is read too when this key is missing)."""
    content_key: str = "value"
    """Key of a turn's text (``content`` is read too when this key is missing)."""
    roles: RoleMap = {}
    """Extra speaker names: ``{ bot = "assistant", customer = "user" }`` (human/gpt/system are known)."""
    tools: str = "tools"
    """Column of the tools the conversation may call (function schemas, or their JSON text), passed to the chat
    template as ``tools`` (LLaMA-Factory's ShareGPT tool format: ``function_call`` and ``observation`` turns)."""


class ShareGPT(DatasetFormat):
    """ShareGPT rows: turns with ``from``/``value`` (human, gpt, system) or ``role``/``content``; system turns kept.

    LLaMA-Factory's ``function_call`` turns (a JSON call) become assistant tool calls, ``observation`` tool results."""

    name = "sharegpt"
    Options = ShareGPTOptions

    def _roles(self) -> dict[str, str]:
        return {**ROLE_NAMES, **{k.lower(): v for k, v in self.options.roles.items()}}

    def detect(self, row: dict[str, Any]) -> bool:
        turns = row.get(self.options.column)
        return isinstance(turns, list) and bool(turns) and isinstance(turns[0], dict) and (
            self.options.role_key in turns[0] or "role" in turns[0])

    def standardize(self, row: dict[str, Any]) -> list[dict[str, str]] | None:
        turns = row.get(self.options.column)
        o = self.options
        if tools_column(row.get(o.tools)) is _BAD:
            return None
        if isinstance(turns, list) and turns and isinstance(turns[0], dict) and o.role_key not in turns[0]:
            return _turns(turns, "role", "content", self._roles())
        return _turns(turns, o.role_key, o.content_key, self._roles())

    def tools_of(self, row: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The tools of a row (rendered by templates that support them)."""
        tools = tools_column(row.get(self.options.tools))
        return None if tools is _BAD else tools  # type: ignore[return-value]


class MessagesOptions(Options):
    column: str = "messages"
    """Column holding the list of ``{role, content}`` messages."""
    role_key: str = "role"
    """Key of a message's role."""
    content_key: str = "content"
    """Key of a message's text."""
    roles: RoleMap = {}
    """Extra role names mapped to system, user, assistant or tool."""
    tools: str = "tools"
    """Column of the tools the conversation may call (OpenAI function schemas, or their JSON text), passed to the
    chat template as ``tools``; a row without it (or with an empty list) has none."""


class Messages(DatasetFormat):
    """OpenAI-style chat rows: ``messages = [{role, content}, ...]`` with system, user and assistant roles; assistant
    ``tool_calls``, ``tool`` turns and a ``tools`` column are kept for templates that render tool calls."""

    name = "messages"
    also_known_as = ("openai",)
    Options = MessagesOptions

    def detect(self, row: dict[str, Any]) -> bool:
        turns = row.get(self.options.column)
        return isinstance(turns, list) and bool(turns) and isinstance(turns[0], dict) and self.options.role_key in turns[0]

    def standardize(self, row: dict[str, Any]) -> list[dict[str, Any]] | None:
        o = self.options
        if tools_column(row.get(o.tools)) is _BAD:
            return None
        return _turns(row.get(o.column), o.role_key, o.content_key,
                      {**ROLE_NAMES, **{k.lower(): v for k, v in o.roles.items()}})

    def tools_of(self, row: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The tools of a row (rendered by templates that support them)."""
        tools = tools_column(row.get(self.options.tools))
        return None if tools is _BAD else tools  # type: ignore[return-value]


class AlpacaOptions(Options):
    instruction: str = "instruction"
    """Column of the instruction (the user's request)."""
    input: str = "input"
    """Column of the optional input; when not empty it follows the instruction after a blank line."""
    output: str = "output"
    """Column of the answer."""
    system: str | None = None
    """Column of a per-row system message, if the data has one."""


class Alpaca(DatasetFormat):
    """Alpaca rows: ``instruction``, optional ``input``, ``output`` -> one user turn and one answer."""

    name = "alpaca"
    Options = AlpacaOptions

    def detect(self, row: dict[str, Any]) -> bool:
        return isinstance(row.get(self.options.instruction), str) and isinstance(row.get(self.options.output), str)

    def standardize(self, row: dict[str, Any]) -> list[dict[str, str]] | None:
        o = self.options
        instruction, extra, output = row.get(o.instruction), row.get(o.input), row.get(o.output)
        if not isinstance(instruction, str) or not isinstance(output, str):
            return None
        if extra is not None and not isinstance(extra, str):
            return None
        turn: dict[str, str] = {"role": "user", "content": instruction}
        if extra and extra.strip():  # other templates see instruction and input as one text; the alpaca template
            turn = {**turn, "content": instruction + "\n\n" + extra, "instruction": instruction, "input": extra}
        messages = [turn, {"role": "assistant", "content": output}]  # writes its ### Input: section
        system = row.get(o.system) if o.system else None
        if isinstance(system, str) and system.strip():
            messages.insert(0, {"role": "system", "content": system})
        return messages


class PromptCompletionOptions(Options):
    prompt: str = "prompt"
    """Column of the prompt: a string, or a list of ``{role, content}`` messages (TRL's conversational form)."""
    completion: str = "completion"
    """Column of the completion: a string, or a list of assistant messages."""
    system: str | None = None
    """Column of a per-row system message, if the data has one."""


class PromptCompletion(DatasetFormat):
    """Prompt/completion rows (TRL's format): the prompt is the user's turn, the completion the answer."""

    name = "prompt_completion"
    Options = PromptCompletionOptions

    def detect(self, row: dict[str, Any]) -> bool:
        return self.options.prompt in row and self.options.completion in row

    def _part(self, value: Any, role: str) -> list[dict[str, str]] | None:
        if isinstance(value, str):
            return [{"role": role, "content": value}]
        if isinstance(value, list) and value:
            turns = []
            for turn in value:
                if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
                    return None
                mapped = ROLE_NAMES.get(str(turn.get("role", role)).lower())
                if mapped is None:
                    return None
                turns.append({"role": mapped, "content": turn["content"]})
            return turns
        return None

    def standardize(self, row: dict[str, Any]) -> list[dict[str, str]] | None:
        o = self.options
        prompt = self._part(row.get(o.prompt), "user")
        completion = self._part(row.get(o.completion), "assistant")
        if prompt is None or completion is None or not any(m["role"] == "assistant" for m in completion):
            return None
        messages = prompt + completion
        system = row.get(o.system) if o.system else None
        if isinstance(system, str) and system.strip() and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system})
        return messages


class TextOptions(Options):
    column: str = "text"
    """Column of the raw text."""
    add_eos: bool = True
    """End each text with the tokenizer's EOS token, so documents are separated."""


class Text(DatasetFormat):
    """Raw text for continued pretraining: no chat template; the loss is taken on every token."""

    name = "text"
    Options = TextOptions

    def detect(self, row: dict[str, Any]) -> bool:
        return isinstance(row.get(self.options.column), str)

    def standardize(self, row: dict[str, Any]) -> list[dict[str, str]] | None:
        text = row.get(self.options.column)
        if not isinstance(text, str) or not text.strip():
            return None
        return [{"role": TEXT_ROLE, "content": text, "add_eos": self.options.add_eos}]  # type: ignore[dict-item]


class AutoOptions(Options):
    sample_rows: int = 20
    """How many of the first rows to look at."""


class Auto(DatasetFormat):
    """Detects the format from the first rows (preference, sharegpt, messages, alpaca, prompt_completion, text, in that order)
    and says which it chose. Name the format explicitly when its columns have other names."""

    name = "auto"
    Options = AutoOptions
    CANDIDATES: tuple[type[DatasetFormat], ...] = (ShareGPT, Messages, Alpaca, PromptCompletion, Text)

    def resolve(self, rows: list[dict[str, Any]]) -> DatasetFormat:
        """The format that reads most of the first rows (ties go to the earlier candidate)."""
        sample = rows[: self.options.sample_rows]
        best, best_score = None, 0
        from .preference import Preference  # first: UltraFeedback rows also have messages, KTO rows prompt/completion

        candidates = (Preference, *self.CANDIDATES)
        for cls in candidates:
            fmt = cls()
            score = sum(1 for row in sample if fmt.detect(row) and fmt.standardize(row))
            if score > best_score:
                best, best_score = fmt, score
        if best is None:
            columns = ", ".join(sorted(rows[0])) if rows else "(no rows)"
            raise UserError(f"format.standardizer = \"auto\" recognised none of {', '.join(c.name for c in candidates)} "
                            f"in the first {len(sample)} rows (columns: {columns}); name the format and its columns, "
                            "e.g. standardizer = { use = \"alpaca\", instruction = \"question\", output = \"answer\" }")
        return best

    def standardize(self, row: dict[str, Any]) -> list[dict[str, str]] | None:  # pragma: no cover - resolved first
        raise RuntimeError("the auto format is resolved from the first rows before standardizing")


BUILTIN_FORMATS: tuple[type[DatasetFormat], ...] = (ShareGPT, Messages, Alpaca, PromptCompletion, Text, Auto)


@hookimpl
def register_dataset_formats(register):
    for cls in BUILTIN_FORMATS:
        register(cls)
