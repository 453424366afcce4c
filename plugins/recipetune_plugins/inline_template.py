"""A chat template written in the recipe (``chat_template = { jinja = \"\"\"...\"\"\", stop_token = "..." }``) or in
a ``.jinja`` file (``chat_template = "mine.jinja"``): the ``inline`` component.

The loader turns a ``chat_template`` table with ``jinja`` or ``path`` (and no ``use``), or a string ending in
``.jinja``, into ``use = "inline"`` (:func:`recipetune.recipe.model.inline_template_table`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import model_validator

from recipetune import ChatTemplate, Options
from recipetune.recipe.types import ExistingRecipePath


class InlineOptions(Options):
    jinja: str | None = None
    """The template's Jinja text, written in the recipe (``jinja = \"\"\"...\"\"\"``)."""
    path: ExistingRecipePath | None = None
    """A ``.jinja`` file holding the template (relative to the recipe); ``chat_template = "x.jinja"`` is short for it."""
    stop_token: str | None = None
    """The token that ends an assistant turn: trained, and written into the tokenizer, the generation config and
    every export. Default: the tokenizer's EOS."""
    special_tokens: list[str] = []
    """Tokens the template writes that must stay single tokens (``<|im_start|>``...): added to a tokenizer that lacks
    them, as the built-in templates do. The stop token is always added."""
    bos_token: str | None = None
    """``bos_token`` as the template sees it; default: the tokenizer's."""
    eos_token: str | None = None
    """``eos_token`` as the template sees it; default: the stop token, else the tokenizer's EOS."""

    @model_validator(mode="after")
    def _check(self) -> "InlineOptions":
        if (self.jinja is None) == (self.path is None):
            raise ValueError('write the template as jinja = """...""" or give a file: path = "template.jinja" (one of them)')
        text = self.text()
        from jinja2 import TemplateSyntaxError

        from recipetune.data.templating import compile_template

        try:
            compile_template(text)
        except TemplateSyntaxError as exc:
            raise ValueError(f"the chat template is not valid Jinja: {exc.message} (line {exc.lineno} of the "
                             "template)") from None
        return self

    def text(self) -> str:
        if self.jinja is not None:
            return self.jinja
        try:
            return Path(self.path).read_text(encoding="utf-8")  # type: ignore[arg-type]
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the chat template {self.path}: {exc}") from None


class InlineTemplate(ChatTemplate):
    """A template written in the recipe (``chat_template = { jinja = \"\"\"...\"\"\", stop_token = "..." }``) or in
    a ``.jinja`` file: rendered in the same sandbox and checked (masks, stop token) like a built-in one, and
    exported with the model (GGUF metadata, Modelfile) the same way."""

    name = "inline"
    Options = InlineOptions

    @property
    def template(self) -> str:  # type: ignore[override]
        return self.options.text()

    @property
    def stop_token(self) -> str | None:  # type: ignore[override]
        return self.options.stop_token

    @property
    def bos_token(self) -> str | None:  # type: ignore[override]
        return self.options.bos_token

    @property
    def eos_token(self) -> str | None:  # type: ignore[override]
        return self.options.eos_token or self.options.stop_token

    @property
    def special_tokens(self) -> tuple[str, ...]:  # type: ignore[override]
        tokens = list(self.options.special_tokens)
        if self.options.stop_token and self.options.stop_token not in tokens:
            tokens.append(self.options.stop_token)
        return tuple(tokens)
