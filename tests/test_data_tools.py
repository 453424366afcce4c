"""Tool calls: the messages standardizer keeps them (OpenAI format), the templates that support tools render them
byte-for-byte as the official templates do, and the loss covers the assistant's calls but not the tools' results.
A per-turn ``train`` / ``weight`` flag (Axolotl's) decides which assistant turns are trained.

The official texts are ``tests/data/official_templates/*.jinja`` (as in ``test_data_templates.py``), rendered
with plain jinja2 set up as transformers sets it up, and cross-checked with transformers' own
``apply_chat_template(..., tools=...)``. The conversations are written for this file.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path

import pytest
from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from recipetune import load_recipe
from recipetune.data.pipeline import build_dataset, template_variables
from recipetune.data.templating import assistant_spans, render
from recipetune.testing import make_tokenizer
from recipetune_plugins import chat_templates as ct
from recipetune_plugins.standardizers import Messages

OFFICIAL = Path(__file__).parent / "data" / "official_templates"
VARIABLES = {"llama-3.1": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
             "qwen-2.5": {"bos_token": "", "eos_token": "<|im_end|>"}}


def official_render(name: str, messages, add_generation_prompt: bool = False, **variables) -> str:
    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    text = (OFFICIAL / f"{name}.jinja").read_text(encoding="utf-8")
    return env.from_string(text).render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string",
                   "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}
CONVERT = {"type": "function", "function": {
    "name": "convert_currency", "description": "Convert an amount between currencies.",
    "parameters": {"type": "object", "properties": {"amount": {"type": "number"}, "from": {"type": "string"},
                   "to": {"type": "string"}}, "required": ["amount", "from", "to"]}}}


def call(name, arguments, id_=None):
    out = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return {"id": id_, **out} if id_ else out


# rows as an OpenAI-format dataset holds them: arguments as JSON text, content null beside tool calls
ROWS = {
    "one_call": {
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "Is it raining in Lyon?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\": \"Lyon\", \"unit\": \"celsius\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"rain\": true, \"temp\": 11}"},
            {"role": "assistant", "content": "Yes, it is raining in Lyon (11 °C)."},
        ]},
    "system_two_tools_two_rounds": {
        "tools": [WEATHER, CONVERT],
        "messages": [
            {"role": "system", "content": "You are a travel helper. Use the tools when they help."},
            {"role": "user", "content": "How much is 120 EUR in yen, and is Kyoto sunny?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "convert_currency",
                                                  "arguments": {"amount": 120, "from": "EUR", "to": "JPY"}}}]},
            {"role": "tool", "content": "19,680 JPY"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"京都\"}"}}]},
            {"role": "tool", "content": "sunny, 23 °C"},
            {"role": "assistant", "content": "120 EUR is about 19,680 JPY, and Kyoto is sunny (23 °C)."},
        ]},
    "parallel_calls": {  # two calls in one turn: Qwen writes both; Llama 3.1 refuses (one call at a time)
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "Weather in Oslo and in Rome?"},
            {"role": "assistant", "content": "Checking both.", "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}},
                {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
            {"role": "tool", "tool_call_id": "a", "content": "snow"},
            {"role": "tool", "tool_call_id": "b", "content": "sun"},
            {"role": "assistant", "content": "Snow in Oslo, sun in Rome."},
        ]},
    "calls_without_tools_column": {
        "messages": [
            {"role": "user", "content": "Ping the weather service for Quito."},
            {"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Quito\"}"}}]},
            {"role": "tool", "content": "{\"ok\": true}"},
            {"role": "assistant", "content": "The service answered: ok."},
        ]},
}


def standardized(row):
    fmt = Messages()
    return fmt.standardize(copy.deepcopy(row)), fmt.tools_of(row)


def as_official(messages):
    """The standardized conversation as transformers is given it: the same messages (what we pass is what it sees)."""
    return copy.deepcopy(messages)


def ours(name, messages, tools, prompt=False):
    template = ct.Llama31() if name == "llama-3.1" else ct.Qwen25()
    extra = {"tools": tools} if tools else {}
    return render(template.template_for(None), messages, add_generation_prompt=prompt,
                  **template_variables(make_tokenizer(), template), **extra)


CASES = [(name, conv, cut) for name in ("llama-3.1", "qwen-2.5") for conv in ROWS for cut in ("all", "after_tool")]


@pytest.mark.parametrize("name,conv,cut", CASES, ids=[f"{n}-{c}-{k}" for n, c, k in CASES])
def test_tool_conversations_render_like_the_official_templates(name, conv, cut):
    messages, tools = standardized(ROWS[conv])
    prompt = cut == "after_tool"
    if prompt:  # the conversation up to the last tool result, with the generation prompt
        messages = messages[: max(i for i, m in enumerate(messages) if m["role"] == "tool") + 1]
    extra = {"tools": tools} if tools else {}
    variables = {**VARIABLES[name], **extra}
    if name == "llama-3.1" and conv == "parallel_calls":
        with pytest.raises(TemplateError, match="single tool-calls"):
            official_render(name, as_official(messages), prompt, **variables)
        with pytest.raises(TemplateError, match="single tool-calls"):
            ours(name, messages, tools, prompt)
        return
    expected = official_render(name, as_official(messages), prompt, **variables)
    assert ours(name, messages, tools, prompt) == expected
    for tool in tools or ():  # the tools are in the rendering (Llama: the first user turn; Qwen: the system turn)
        assert json.dumps(tool["function"]["name"]) in expected


def test_the_official_rendering_is_transformers_own():
    """Cross-check of the plain-jinja2 rendering: transformers' apply_chat_template with tools= gives the same."""
    tokenizer = make_tokenizer()
    for name in ("llama-3.1", "qwen-2.5"):
        for conv in ("one_call", "system_two_tools_two_rounds"):
            messages, tools = standardized(ROWS[conv])
            got = tokenizer.apply_chat_template(as_official(messages), tools=tools, tokenize=False,
                                                chat_template=(OFFICIAL / f"{name}.jinja").read_text(),
                                                bos_token=VARIABLES[name]["bos_token"])
            assert got == ours(name, messages, tools)


def test_the_standardizer_keeps_tool_calls_in_openai_form():
    messages, tools = standardized(ROWS["one_call"])
    assert tools == [WEATHER]
    assert messages[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": {"city": "Lyon", "unit": "celsius"}}}]}
    assert messages[2] == {"role": "tool", "content": "{\"rain\": true, \"temp\": 11}", "tool_call_id": "call_1"}
    # tools stored as JSON text (xLAM, glaive) and flat calls {name, arguments} are read too
    row = {"tools": json.dumps([WEATHER]), "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"name": "get_weather", "arguments": {"city": "X"}}]},
        {"role": "tool", "content": "r"}, {"role": "assistant", "content": "a"}]}
    messages, tools = standardized(row)
    assert tools == [WEATHER] and messages[1]["tool_calls"] == [call("get_weather", {"city": "X"})]
    # unreadable calls or tools make the row malformed, never a silently different conversation
    for bad in ({"tools": "not json", "messages": ROWS["one_call"]["messages"]},
                {"messages": [{"role": "user", "content": "q"},
                              {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]},
                {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0.5}]}):
        assert Messages().standardize(bad) is None


# ---------------------------------------------------------------- masks through the format stage
@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    tok = make_tokenizer()
    tok.chat_template = (OFFICIAL / "qwen-2.5.jinja").read_text(encoding="utf-8")  # the model's own template
    tok.save_pretrained(path)
    return path


pytestmark = pytest.mark.usefixtures("private_cache")  # tests/conftest.py


def build(tmp_path, tokenizer_dir, rows, template='"qwen-2.5"', extra=""):
    from transformers import AutoTokenizer

    data = tmp_path / "tools.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f"""name = "tools"
[load]
use = "hf"
model = "{tokenizer_dir}"
max_seq_length = 4096
[format]
dataset = "{data}"
standardizer = "messages"
chat_template = {template}
cache = false
{extra}
[train]
use = "sft"
max_steps = 1
warmup_steps = 0
""", encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return build_dataset(load_recipe(recipe), tokenizer), tokenizer


def trained_text(tokenizer, sample) -> str:
    return tokenizer.decode([t for t in sample["labels"] if t != -100])


@pytest.mark.parametrize("template", ['"qwen-2.5"', '"tokenizer"'])
def test_the_loss_covers_the_tool_calls_and_not_the_tool_results(tmp_path, tokenizer_dir, template):
    ds, tokenizer = build(tmp_path, tokenizer_dir, [ROWS["system_two_tools_two_rounds"], ROWS["parallel_calls"]],
                          template)
    assert len(ds.train) == 2
    messages, tools = standardized(ROWS["system_two_tools_two_rounds"])
    assert ds.train[0]["text"] == tokenizer.apply_chat_template(as_official(messages), tools=tools, tokenize=False)
    trained = trained_text(tokenizer, ds.train[0])
    assert trained == ('<tool_call>\n{"name": "convert_currency", "arguments": {"amount": 120, "from": "EUR", "to": "JPY"}}'
                       '\n</tool_call><|im_end|>'
                       '<tool_call>\n{"name": "get_weather", "arguments": {"city": "京都"}}\n</tool_call><|im_end|>'
                       '120 EUR is about 19,680 JPY, and Kyoto is sunny (23 °C).<|im_end|>')
    assert "19,680 JPY\n" not in trained and "sunny, 23" not in trained and "tool_response" not in trained
    parallel = trained_text(tokenizer, ds.train[1])
    assert parallel.startswith('Checking both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}')
    assert '"Rome"' in parallel and "snow" not in parallel


def test_llama31_masks_the_call_and_not_the_ipython_turn():
    messages, tools = standardized(ROWS["one_call"])
    template = ct.Llama31()
    text, spans = assistant_spans(template.template, messages, tools=tools, **VARIABLES["llama-3.1"])
    assert text == official_render("llama-3.1", as_official(messages), tools=tools, **VARIABLES["llama-3.1"])
    trained = [text[s.start:s.end] for s in spans]
    assert trained == ['{"name": "get_weather", "parameters": {"city": "Lyon", "unit": "celsius"}}<|eot_id|>',
                       "Yes, it is raining in Lyon (11 °C).<|eot_id|>"]


def test_a_template_without_tool_support_drops_the_conversation_instead_of_losing_the_calls(tmp_path, tokenizer_dir):
    """ChatML has no place for tool calls: rendering the turn without them would train an empty answer."""
    plain = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    ds, _ = build(tmp_path, tokenizer_dir, [ROWS["one_call"], plain], '"chatml"', extra="")
    assert len(ds.train) == 1 and ds.stats["dropped_template_error"] == 1


def test_per_turn_train_and_weight_flags_decide_which_answers_are_trained(tmp_path, tokenizer_dir):
    row = {"messages": [
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "A bad first answer.", "weight": 0},
        {"role": "user", "content": "Second question?"},
        {"role": "assistant", "content": "A good second answer.", "train": True},
        {"role": "user", "content": "Third?"},
        {"role": "assistant", "content": "Skip this one too.", "training": False},
    ]}
    ds, tokenizer = build(tmp_path, tokenizer_dir, [row])
    assert trained_text(tokenizer, ds.train[0]) == "A good second answer.<|im_end|>"
    assert "A bad first answer." in ds.train[0]["text"] and "Skip this one too." in ds.train[0]["text"]
    # train_on = "all" trains every token, whatever the flags
    ds_all, _ = build(tmp_path, tokenizer_dir, [row], extra='train_on = "all"')
    assert trained_text(tokenizer, ds_all.train[0]) == ds_all.train[0]["text"]
    # every answer flagged off: nothing to train on, said so
    off = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "train": False}]}
    ds2, _ = build(tmp_path, tokenizer_dir, [row, off])
    assert len(ds2.train) == 1 and ds2.stats["dropped_no_trained_tokens"] == 1


def test_drop_empty_keeps_assistant_turns_that_only_call_tools(tmp_path, tokenizer_dir):
    empty = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}
    ds, _ = build(tmp_path, tokenizer_dir, [ROWS["one_call"], empty],
                  extra='[[format.ops]]\nop = "drop_empty"')
    assert len(ds.train) == 1 and ds.stats["dropped_empty"] == 1 and "get_weather" in ds.train[0]["text"]


def test_llama_factory_sharegpt_tool_format_reads_as_the_openai_one():
    """LLaMA-Factory's ShareGPT tool rows (function_call / observation turns, tools as JSON text) become the same
    conversation as the OpenAI-format row, so they render the same."""
    from recipetune_plugins.standardizers import ShareGPT

    row = {"tools": json.dumps([WEATHER]), "conversations": [
        {"from": "human", "value": "Is it raining in Lyon?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Lyon", "unit": "celsius"}})},
        {"from": "observation", "value": "{\"rain\": true, \"temp\": 11}"},
        {"from": "gpt", "value": "Yes, it is raining in Lyon (11 °C)."}]}
    fmt = ShareGPT()
    messages, tools = fmt.standardize(row), fmt.tools_of(row)
    openai, openai_tools = standardized(ROWS["one_call"])
    for m in openai:
        m.get("tool_calls", [{}])[0].pop("id", None)
        m.pop("tool_call_id", None)
    assert messages == openai and tools == openai_tools
    for name in ("llama-3.1", "qwen-2.5"):
        assert ours(name, messages, tools) == official_render(name, messages, **VARIABLES[name], tools=tools)


def test_llama32_official_template_renders_tools_like_llama31_with_its_date():
    """Llama 3.2's official text differs from 3.1's by today's date (and no builtin tools): with the date pinned,
    the llama-3.1 template renders every tool conversation as it does."""
    for conv in ROWS:
        messages, tools = standardized(ROWS[conv])
        if conv == "parallel_calls":
            continue  # refused by both (one call at a time)
        extra = {"tools": tools} if tools else {}
        for prompt in (False, True):
            expected = official_render("llama-3.2", as_official(messages), prompt, bos_token="<|begin_of_text|>",
                                       date_string="25 Nov 2026", **extra)
            template = ct.Llama31(ct.Llama31.Options(date_string="25 Nov 2026"))
            assert render(template.template, messages, add_generation_prompt=prompt,
                          **template_variables(make_tokenizer(), template), **extra) == expected
