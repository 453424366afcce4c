"""Render chat templates in a sandbox and find the assistant spans a loss mask keeps.

Templates are untrusted text (they come with downloaded tokenizers), so they
render in Jinja's ``ImmutableSandboxedEnvironment``: no attribute access to
Python internals, no mutation of the objects passed in.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

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


def _tojson(value: Any, indent: int | None = None) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, indent=indent)


def render(template: str, messages: list[dict[str, Any]], add_generation_prompt: bool = False, **variables: Any) -> str:
    """Render ``messages`` with ``template`` (``bos_token``, ``eos_token``... in ``variables``)."""
    return compile_template(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)


def assistant_spans(template: str, messages: list[dict[str, Any]], **variables: Any) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering and the character spans of every assistant turn in it.

    A span runs from the end of the generation prompt before an assistant turn
    to the end of that turn (its end-of-turn token included), found by
    rendering growing prefixes of the conversation. A template whose
    renderings are not prefixes of each other (one that rewrites earlier turns)
    raises ``ValueError``: its masks could not be trusted.
    """
    full = render(template, messages, **variables)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = render(template, messages[:i], add_generation_prompt=True, **variables)
        through = render(template, messages[: i + 1], **variables)
        if not full.startswith(through) or not through.startswith(before):
            raise ValueError("the chat template renders earlier turns differently as the conversation grows; "
                             "assistant-only masks cannot be computed for it (set format.train_on = \"all\")")
        if len(through) > len(before):
            spans.append((len(before), len(through)))
    return full, spans
