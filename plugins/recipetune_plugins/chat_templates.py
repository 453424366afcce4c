"""Chat templates: ``tokenizer`` keeps the model's own; the others render each family's official format.

Every template here is written for plain chat (system, user and assistant
turns) and renders byte-identically to the family's official template for
such conversations (``tests/test_chat_templates.py`` compares them with the
official texts rendered by transformers). ``llama-3.1`` and ``qwen-2.5`` also render
tool calls, tool results and a conversation's ``tools`` as their official
templates do (``tests/test_data_tools.py``). Each
names its stop token (trained at the end of every assistant turn, written into
the tokenizer, the generation config and every export) and the special tokens
it needs (added to a tokenizer that lacks them).

A plugin adds a template the same way: subclass :class:`recipetune.ChatTemplate`
and ``register`` it from ``register_chat_templates``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import model_validator

from recipetune import ChatTemplate, Options, hookimpl
from recipetune.recipe.types import ExistingRecipePath


class TokenizerTemplate(ChatTemplate):
    """The template that came with the model's tokenizer; its EOS token ends a turn."""

    name = "tokenizer"


# ---------------------------------------------------------------- Llama 3.x
_LLAMA31 = """\
{%- if date_string is not defined %}
    {%- set date_string = @DATE@ %}
{%- endif %}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if tools is not defined %}
    {%- set tools = none %}
{%- endif %}
{%- if tools_in_user_message is not defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{{- '<|begin_of_text|>' }}
{%- if messages and messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = '' %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}
{%- if tools is not none %}
    {{- 'Environment: ipython\\n' }}
{%- endif %}
{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n' }}
{%- if tools is not none and not tools_in_user_message %}
    {{- 'You have access to the following functions. To call a function, please respond with JSON for a function call.' }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- 'Do not use variables.\\n\\n' }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) + '\\n\\n' }}
    {%- endfor %}
{%- endif %}
{{- system_message + '<|eot_id|>' }}
{%- if tools is not none and tools_in_user_message %}
    {%- if not messages %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' }}
    {{- 'Given the following functions, please respond with a JSON for a function call ' }}
    {{- 'with its proper arguments that best answers the given prompt.\\n\\n' }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- 'Do not use variables.\\n\\n' }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) + '\\n\\n' }}
    {%- endfor %}
    {{- messages[0]['content'] | trim + '<|eot_id|>' }}
    {%- set messages = messages[1:] %}
{%- endif %}
{%- for message in messages %}
    {%- if 'tool_calls' in message %}
        {%- if message['tool_calls'] | length != 1 %}
            {{- raise_exception('This model only supports single tool-calls at once!') }}
        {%- endif %}
        {%- set call = message['tool_calls'][0]['function'] %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n{"name": "' + call['name'] + '", "parameters": ' }}
        {{- call['arguments'] | tojson + '}<|eot_id|>' }}
    {%- elif message['role'] in ['tool', 'ipython'] %}
        {{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' }}
        {{- message['content'] | tojson if message['content'] is mapping or message['content'] is iterable else message['content'] }}
        {{- '<|eot_id|>' }}
    {%- else %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""


class Llama31Options(Options):
    date_string: str = "26 Jul 2024"
    """The "Today Date" of the system header. Meta's Llama-3.1 template fixes "26 Jul 2024"; the 3.2/3.3
    templates print the current date (``strftime_now("%d %b %Y")``), which would make every run's data differ:
    set the date you want here."""


class Llama31(ChatTemplate):
    """Llama 3.1 / 3.2 / 3.3 Instruct: header tokens, ``<|eot_id|>`` ends a turn, and the default system header
    ("Cutting Knowledge Date: December 2023", "Today Date: ...") that Meta's template always writes."""

    name = "llama-3.1"
    Options = Llama31Options
    bos_token = "<|begin_of_text|>"
    eos_token = "<|eot_id|>"
    stop_token = "<|eot_id|>"
    special_tokens = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

    @property
    def template(self) -> str:  # type: ignore[override]
        return _LLAMA31.replace("@DATE@", json.dumps(self.options.date_string))


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


_QWEN25 = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages and messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n' }}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' + tool | tojson }}
    {%- endfor %}
    {{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within ' }}
    {{- '<tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}' }}
    {{- '\\n</tool_call><|im_end|>\\n' }}
{%- elif messages and messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] == 'system' and loop.first %}
    {%- elif message['role'] == 'assistant' and message['tool_calls'] %}
        {{- '<|im_start|>assistant' }}
        {%- if message['content'] %}
            {{- '\\n' + message['content'] }}
        {%- endif %}
        {%- for call in message['tool_calls'] %}
            {%- set call = call['function'] if call['function'] is defined else call %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- call['name'] }}
            {{- '", "arguments": ' + call['arguments'] | tojson + '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message['role'] == 'tool' %}
        {%- if loop.first or loop.previtem['role'] != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message['content'] }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or loop.nextitem['role'] != 'tool' %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- elif message['role'] in ['user', 'system', 'assistant'] %}
        {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


class Qwen25(ChatTemplate):
    """Qwen 2.5 Instruct: ChatML with Qwen's default system message when the conversation has none."""

    name = "qwen-2.5"
    eos_token = "<|im_end|>"
    stop_token = "<|im_end|>"
    special_tokens = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    template = _QWEN25


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


# ---------------------------------------------------------------- written in the recipe
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
