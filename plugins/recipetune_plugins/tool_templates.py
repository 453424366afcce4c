"""The built-in templates that render tool calls: Llama 3.1 and Qwen 2.5.

Each renders plain chat, a conversation's ``tools``, assistant ``tool_calls`` and
``tool`` results byte-for-byte as the family's official template does
(``tests/test_data_templates.py`` for plain chat, ``tests/test_data_tools.py`` for
tools), with the official templates' behaviour kept where it is odd (Llama 3.1
writes a string tool result as JSON, refuses two calls in one turn).
"""

from __future__ import annotations

import json

from recipetune import ChatTemplate, Options


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


# ---------------------------------------------------------------- Qwen 2.5
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
