"""Render chat templates in a sandbox and find the assistant spans a loss mask keeps.

Templates are untrusted text (they come with downloaded tokenizers), so they
render in Jinja's ``ImmutableSandboxedEnvironment``: no attribute access to
Python internals, no mutation of the objects passed in. The environment is
configured as transformers configures its own (``trim_blocks``,
``lstrip_blocks``, ``raise_exception``, ``strftime_now``, ``tojson``), so a
template renders here exactly as ``apply_chat_template`` renders it.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple

from jinja2 import TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class _GenerationTag(Extension):
    """Accept ``{% generation %}...{% endgeneration %}`` (TRL/HF assistant markers) and render the body."""

    tags = {"generation"}

    def parse(self, parser):  # pragma: no cover - trivial
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        from jinja2 import nodes

        return nodes.Scope(body, lineno=lineno)


def _raise(message: str) -> None:
    raise TemplateError(message)


@lru_cache(maxsize=32)
def compile_template(text: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationTag])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(text)


def _tojson(value: Any, indent: int | None = None, separators: tuple[str, str] | None = None,
            sort_keys: bool = False) -> str:
    """transformers' ``tojson``: no ASCII escaping, and its ``indent``, ``separators`` and ``sort_keys``."""
    import json

    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


def render(template: str, messages: list[dict[str, Any]], add_generation_prompt: bool = False, **variables: Any) -> str:
    """Render ``messages`` with ``template`` (``bos_token``, ``eos_token``... in ``variables``)."""
    return compile_template(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)


class Span(NamedTuple):
    """Characters ``[start, end)`` of one assistant turn in a rendering.

    ``exact`` is False when the template writes something after the last turn
    only (Phi-3's final ``<|endoftext|>``): the end was found where two
    renderings part, and only tokens wholly inside the span belong to it.
    """

    start: int
    end: int
    exact: bool = True


def assistant_spans(template: str, messages: list[dict[str, Any]], **variables: Any) -> tuple[str, list[Span]]:
    """The full rendering and the character spans of every trained assistant turn in it (a turn with
    ``train: False`` is rendered but not trained; a turn's tool calls must appear in its span).

    A span runs from the end of the generation prompt before an assistant turn
    to the end of that turn (its end-of-turn token included), found by
    rendering growing prefixes of the conversation. A template whose
    renderings are not prefixes of each other (one that rewrites earlier turns)
    raises ``ValueError``: its masks could not be trusted.
    """
    compiled = compile_template(template)

    def draw(upto: int, prompt: bool) -> str:
        return compiled.render(messages=messages[:upto], add_generation_prompt=prompt, **variables)

    full = draw(len(messages), False)
    spans: list[Span] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = draw(i, True)
        through = full if i == len(messages) - 1 else draw(i + 1, False)
        if not full.startswith(before) or not through.startswith(before):
            raise ValueError("the chat template renders earlier turns differently as the conversation grows; "
                             "assistant-only masks cannot be computed for it (set format.train_on = \"all\")")
        if full.startswith(through):
            end, exact = len(through), True
        else:  # something written only after the last turn: the turn ends where the renderings part
            end = len(before)
            limit = min(len(through), len(full))
            while end < limit and through[end] == full[end]:
                end += 1
            exact = False
            content = message.get("content")
            if isinstance(content, str) and content.strip() and content.strip() not in full[len(before):end]:
                # not Phi-3's tail: the final rendering writes this answer differently (a template that rewrites
                # earlier turns, such as one that drops their reasoning), so its mask would miss the answer
                raise ValueError("the chat template writes an earlier assistant turn differently once the conversation "
                                 "goes on; assistant-only masks cannot be computed for it (set format.train_on = "
                                 "\"all\", or train on one assistant turn per sample)")
        if message.get("tool_calls"):
            _check_tool_calls(full[len(before):end], message)
        if end > len(before) and message.get("train") is not False:
            spans.append(Span(len(before), end, exact))
    return full, spans


def _check_tool_calls(turn: str, message: dict[str, Any]) -> None:
    """An assistant turn's tool calls must be in its rendering: a template without tool support would silently train
    the model on an answer with the calls left out."""
    for call in message.get("tool_calls") or ():
        function = call.get("function", call) if isinstance(call, dict) else {}
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name not in turn:
            raise ValueError(f"the chat template does not write the tool call {name!r} of an assistant turn; use a "
                             "template that supports tool calls (llama-3.1, qwen-2.5, or the model's own)")
