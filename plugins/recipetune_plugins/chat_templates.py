"""Chat templates. ``tokenizer`` keeps the model's own template (SmolLM2's ChatML...)."""

from __future__ import annotations

from recipetune import ChatTemplate, hookimpl


class TokenizerTemplate(ChatTemplate):
    """The template that came with the model's tokenizer; its EOS token ends a turn."""

    name = "tokenizer"


@hookimpl
def register_chat_templates(register):
    register(TokenizerTemplate)
