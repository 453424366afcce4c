"""Chat templates come with downloaded tokenizers: they render in Jinja's immutable sandbox."""

from __future__ import annotations

import pytest
from jinja2.exceptions import SecurityError

from recipetune.data.templating import render

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("template", [
    "{{ messages.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__.__base__.__subclasses__() }}",
    "{{ raise_exception.__globals__ }}",
    "{% set _ = messages.append({'role': 'x'}) %}",
    "{% set _ = messages[0].update({'role': 'x'}) %}",
])
def test_escapes_and_mutation_are_refused(template):
    try:
        leaked = render(template, MESSAGES)
    except SecurityError:
        leaked = ""
    assert leaked == "", f"the sandbox let through: {leaked[:80]}"
    assert MESSAGES == [{"role": "user", "content": "hi"}]


def test_ordinary_templates_render():
    text = render("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | trim }}{% endfor %}"
                  "{% if add_generation_prompt %}<assistant>{% endif %}", MESSAGES, add_generation_prompt=True)
    assert text == "<user>hi<assistant>"
