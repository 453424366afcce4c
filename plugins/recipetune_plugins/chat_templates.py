"""Chat templates: ``tokenizer`` keeps the model's own; the others render each family's official format.

Every template here is written for plain chat (system, user and assistant
turns) and renders byte-identically to the family's official template for
such conversations (``tests/test_chat_templates.py`` compares them with the
official texts rendered by transformers). ``llama-3.1`` and ``qwen-2.5``
(:mod:`.tool_templates`) also render tool calls, tool results and a
conversation's ``tools`` as their official templates do; ``inline``
(:mod:`.inline_template`) is a template written in the recipe. Each
names its stop token (trained at the end of every assistant turn, written into
the tokenizer, the generation config and every export) and the special tokens
it needs (added to a tokenizer that lacks them).

A plugin adds a template the same way: subclass :class:`recipetune.ChatTemplate`
and ``register`` it from ``register_chat_templates``.
"""

from __future__ import annotations

import json
from typing import Any

from recipetune import ChatTemplate, hookimpl

from .inline_template import InlineOptions, InlineTemplate  # noqa: F401 - registered below
from .tool_templates import Llama31, Llama31Options, Qwen25  # noqa: F401 - registered below


class TokenizerTemplate(ChatTemplate):
    """The template that came with the model's tokenizer; its EOS token ends a turn."""

    name = "tokenizer"


# ---------------------------------------------------------------- Llama 2, Mistral
_LLAMA2 = """\
{%- if messages and messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = none %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- set content = message['content'] %}
    {%- if loop.first and system_message is not none %}
        {%- set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + content %}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {{- '<s>[INST] ' + content | trim + ' [/INST]' }}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + content | trim + ' </s>' }}
    {%- endif %}
{%- endfor %}
"""


class Llama2(ChatTemplate):
    """Llama 2 Chat: ``<s>[INST] <<SYS>>...<</SYS>> question [/INST] answer </s>``; no generation prompt of its own."""

    name = "llama-2"
    bos_token = "<s>"
    eos_token = "</s>"
    stop_token = "</s>"
    special_tokens = ("<s>", "</s>")
    template = _LLAMA2


_MISTRAL = """\
{{- '<s>' }}
{%- if messages and messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] + '\\n\\n' %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = '' %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {{- '[INST] ' + (system_message if loop.first else '') + message['content'] + ' [/INST]' }}
    {%- elif message['role'] == 'assistant' %}
        {{- message['content'] + '</s>' }}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported!') }}
    {%- endif %}
{%- endfor %}
"""


class Mistral(ChatTemplate):
    """Mistral Instruct v0.1/v0.2: ``<s>[INST] question [/INST]answer</s>``. The official template refuses a
    system message; this one prefixes it to the first user message (separated by a blank line)."""

    name = "mistral"
    bos_token = "<s>"
    eos_token = "</s>"
    stop_token = "</s>"
    special_tokens = ("<s>", "</s>")
    template = _MISTRAL


# ---------------------------------------------------------------- ChatML family
_CHATML = """\
{%- for message in messages %}
    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


class ChatML(ChatTemplate):
    """ChatML (OpenHermes, SmolLM, many others): ``<|im_start|>role\\ncontent<|im_end|>``."""

    name = "chatml"
    eos_token = "<|im_end|>"
    stop_token = "<|im_end|>"
    special_tokens = ("<|im_start|>", "<|im_end|>")
    template = _CHATML


# ---------------------------------------------------------------- Gemma, Phi-3, Zephyr
_GEMMA = """\
{{- '<bos>' }}
{%- if messages and messages[0]['role'] == 'system' %}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set first_user_prefix = '' %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}
    {{- '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<start_of_turn>model\\n' }}
{%- endif %}
"""


class Gemma(ChatTemplate):
    """Gemma, Gemma 2 and Gemma 3 instruction-tuned: ``<start_of_turn>user ... <end_of_turn>``, assistant as
    ``model``. A system message is put before the first user message, as Gemma 3's template does (Gemma 1/2's
    refuse one)."""

    name = "gemma"
    bos_token = "<bos>"
    eos_token = "<end_of_turn>"
    stop_token = "<end_of_turn>"
    special_tokens = ("<bos>", "<start_of_turn>", "<end_of_turn>")
    template = _GEMMA


_PHI3 = """\
{%- for message in messages %}
    {%- if message['role'] in ['system', 'user', 'assistant'] %}
        {{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|assistant|>\\n' }}
{%- else %}
    {{- '<|endoftext|>' }}
{%- endif %}
"""


class Phi3(ChatTemplate):
    """Phi-3 / Phi-3.5 instruct: ``<|user|>\\n...<|end|>``; a finished conversation ends with ``<|endoftext|>``."""

    name = "phi-3"
    eos_token = "<|endoftext|>"
    stop_token = "<|end|>"
    special_tokens = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>")
    template = _PHI3


_ZEPHYR = """\
{%- for message in messages %}
    {%- if message['role'] in ['system', 'user', 'assistant'] %}
        {{- '<|' + message['role'] + '|>\\n' + message['content'] + '</s>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt and messages %}
    {{- '<|assistant|>\\n' }}
{%- endif %}
"""


class Zephyr(ChatTemplate):
    """Zephyr (HuggingFaceH4/zephyr-7b-beta, TinyLlama-Chat): ``<|user|>\\n...</s>``."""

    name = "zephyr"
    bos_token = "<s>"
    eos_token = "</s>"
    stop_token = "</s>"
    special_tokens = ("</s>", "<|system|>", "<|user|>", "<|assistant|>")
    template = _ZEPHYR


# ---------------------------------------------------------------- plain-text formats
ALPACA_SYSTEM = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
ALPACA_INPUT_SYSTEM = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.")
_ALPACA = """\
{%- if messages and messages[0]['role'] == 'system' %}
    {{- messages[0]['content'] }}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
    {{- @INPUT_SYSTEM@ if loop_messages and loop_messages[0].get('input') else @SYSTEM@ }}
{%- endif %}
{%- for message in loop_messages %}
    {%- if message['role'] == 'user' and message.get('input') %}
        {{- '\\n\\n### Instruction:\\n' + message['instruction'] + '\\n\\n### Input:\\n' + message['input'] }}
    {%- elif message['role'] == 'user' %}
        {{- '\\n\\n### Instruction:\\n' + message['content'] }}
    {%- elif message['role'] == 'assistant' %}
        {{- '\\n\\n### Response:\\n' + message['content'] + eos_token }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '\\n\\n### Response:\\n' }}
{%- endif %}
""".replace("@SYSTEM@", json.dumps(ALPACA_SYSTEM)).replace("@INPUT_SYSTEM@", json.dumps(ALPACA_INPUT_SYSTEM))


class Alpaca(ChatTemplate):
    """Alpaca's instruction format (alpaca-lora's prompts): the preamble, ``### Instruction:``, ``### Input:`` for a
    row with an input (the ``alpaca`` standardizer keeps it apart; then the preamble mentions it), ``### Response:``,
    the answer and the tokenizer's EOS; later turns repeat the headers."""

    name = "alpaca"
    template = _ALPACA


VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
_VICUNA = """\
{%- if messages and messages[0]['role'] == 'system' %}
    {{- messages[0]['content'] + ' ' }}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {{- @SYSTEM@ + ' ' }}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if message['role'] == 'user' %}
        {{- 'USER: ' + message['content'] + ' ' }}
    {%- elif message['role'] == 'assistant' %}
        {{- 'ASSISTANT: ' + message['content'] + eos_token }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- 'ASSISTANT:' }}
{%- endif %}
""".replace("@SYSTEM@", json.dumps(VICUNA_SYSTEM))


class Vicuna(ChatTemplate):
    """Vicuna v1.1 (FastChat's ``vicuna_v1.1`` conversation): ``SYSTEM USER: q ASSISTANT: a</s>USER: ...``;
    the tokenizer's EOS ends an answer."""

    name = "vicuna"
    template = _VICUNA


BUILTIN_TEMPLATES: tuple[type[ChatTemplate], ...] = (
    TokenizerTemplate, Llama31, Llama2, Mistral, ChatML, Qwen25, Gemma, Phi3, Zephyr, Alpaca, Vicuna, InlineTemplate)


def template_names() -> list[str]:
    return [cls.name for cls in BUILTIN_TEMPLATES]


def describe(template: ChatTemplate, tokenizer: Any = None) -> str:
    """One line: the template's name and its stop token."""
    stop = template.stop_token_for(tokenizer) if tokenizer is not None else template.stop_token
    return f"{template.name} (stop token {stop!r})"


@hookimpl
def register_chat_templates(register):
    for cls in BUILTIN_TEMPLATES:
        register(cls)
