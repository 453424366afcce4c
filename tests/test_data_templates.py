"""Every built-in chat template renders byte-for-byte what the family's official template renders.

The official texts (``tests/data/official_templates/*.jinja``, copied from the models' tokenizer
configs) are rendered here with plain jinja2, configured as transformers configures it, on
conversations written for this file: with and without a system message, multi-turn, unicode,
odd whitespace, with and without the generation prompt. Alpaca and Vicuna have no Jinja
original; they are compared with their reference prompt formats written out by hand.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from recipetune.data.pipeline import prepare_tokenizer, template_variables
from recipetune.data.templating import render
from recipetune.testing import make_tokenizer
from recipetune_plugins import chat_templates as ct

OFFICIAL = Path(__file__).parent / "data" / "official_templates"


def official_render(name: str, messages, add_generation_prompt: bool, **variables) -> str:
    """The official template text rendered by plain jinja2, the way transformers sets it up."""

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    text = (OFFICIAL / f"{name}.jinja").read_text(encoding="utf-8")
    return env.from_string(text).render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)


def S(text):
    return {"role": "system", "content": text}


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


CONVERSATIONS = {
    "system_multi_turn": [
        S("You are Marlowe, a terse librarian who answers in one sentence."),
        U("Where do I find books on tide pools?"),
        A("Shelf 5C, next to the marine atlases."),
        U("And the ones on kelp forests?"),
        A("Same shelf, second row from the top."),
        U("Thanks! Anything on octopuses?"),
        A("Try 5D: cephalopods have their own bay."),
    ],
    "no_system": [
        U("Convert 72 degrees Fahrenheit to Celsius."),
        A("72 °F is about 22.2 °C."),
        U("And 0 °C in Kelvin?"),
        A("273.15 K."),
    ],
    "unicode": [
        S("Réponds en français, s'il te plaît — avec des émojis 🎉."),
        U("Ünïcödé? 你好，世界！ مرحبا بالعالم ‏(RTL) «quotes» “curly” ‘single’ … ©®™"),
        A("Oui ! 😀👍🏽 — « voilà » ; 日本語もOK。 Zero‑width​joiner: 👩‍💻"),
    ],
    "whitespace": [
        S("  padded system\n\n"),
        U("\n\ttabbed question with trailing spaces   \n"),
        A("  answer with\n  an indented line\n\n"),
        U("   "),
        A("x\r\ny"),
    ],
    "single_turn": [U("Say nothing but 'ok'."), A("ok")],
    "open_question": [
        S("Be brief."),
        U("Name a prime number above 100."),
        A("101."),
        U("Another one?"),
    ],
    "open_question_no_system": [U("What rhymes with orange?")],
}

# Official templates that refuse a system message (the built-ins then put it before the first user turn).
NO_SYSTEM = {"mistral", "gemma"}

# template -> (official files, the bos/eos the official text is rendered with)
OFFICIAL_FILES = {
    "llama-3.1": (["llama-3.1", "llama-3.2"], {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    "llama-2": (["llama-2"], {"bos_token": "<s>", "eos_token": "</s>"}),
    "mistral": (["mistral"], {"bos_token": "<s>", "eos_token": "</s>"}),
    "chatml": (["chatml"], {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"}),
    "qwen-2.5": (["qwen-2.5"], {"bos_token": "", "eos_token": "<|im_end|>"}),
    "gemma": (["gemma", "gemma3"], {"bos_token": "<bos>", "eos_token": "<eos>"}),
    "phi-3": (["phi-3"], {"bos_token": "<s>", "eos_token": "<|endoftext|>"}),
    "zephyr": (["zephyr"], {"bos_token": "<s>", "eos_token": "</s>"}),
}

BY_NAME = {cls.name: cls for cls in ct.BUILTIN_TEMPLATES}


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def ours(name: str, tokenizer, messages, add_generation_prompt: bool, **options) -> str:
    cls = BY_NAME[name]
    template = cls(cls.Options(**options)) if options else cls()
    return render(template.template_for(tokenizer), messages, add_generation_prompt=add_generation_prompt,
                  **template_variables(tokenizer, template))


def test_every_builtin_template_is_covered():
    assert set(ct.template_names()) == {"tokenizer", *OFFICIAL_FILES, "alpaca", "vicuna", "inline"}
    assert {p.stem for p in OFFICIAL.glob("*.jinja")} == {f for files, _ in OFFICIAL_FILES.values() for f in files}


CASES = [(name, official, conv, prompt)
         for name, (files, _) in OFFICIAL_FILES.items() for official in files
         for conv in CONVERSATIONS for prompt in (False, True)]


@pytest.mark.parametrize("name,official,conv,prompt", CASES, ids=[f"{n}-{o}-{c}-{'gen' if p else 'nogen'}" for n, o, c, p in CASES])
def test_renders_like_the_official_template(tokenizer, name, official, conv, prompt):
    messages = CONVERSATIONS[conv]
    if official in NO_SYSTEM and messages[0]["role"] == "system":
        with pytest.raises(TemplateError):  # the official one refuses it: nothing to compare
            official_render(official, messages, prompt, **OFFICIAL_FILES[name][1])
        return
    variables = dict(OFFICIAL_FILES[name][1])
    options = {}
    if official == "llama-3.2":  # 3.2 prints today's date; pin both to one date
        variables["date_string"] = options["date_string"] = "25 Nov 2026"
    expected = official_render(official, messages, prompt, **variables)
    assert ours(name, tokenizer, messages, prompt, **options) == expected


def test_llama31_date_option_is_the_only_difference_to_llama32(tokenizer):
    messages = CONVERSATIONS["no_system"]
    today = datetime.now().strftime("%d %b %Y")
    assert ours("llama-3.1", tokenizer, messages, True, date_string=today) == official_render(
        "llama-3.2", messages, True, bos_token="<|begin_of_text|>")


def test_system_message_where_the_official_template_refuses_one(tokenizer):
    messages = [S("Be terse."), U("Hi?"), A("Hi.")]
    assert ours("mistral", tokenizer, messages, False) == "<s>[INST] Be terse.\n\nHi? [/INST]Hi.</s>"
    # Gemma: as Gemma 3's template does it
    assert ours("gemma", tokenizer, messages, False) == official_render("gemma3", messages, False, bos_token="<bos>")


def test_roles_that_do_not_alternate_are_refused_like_the_official_templates(tokenizer):
    messages = [U("one"), U("two"), A("three")]
    for name in ("llama-2", "mistral", "gemma"):
        with pytest.raises(TemplateError, match="alternate"):
            ours(name, tokenizer, messages, False)
        with pytest.raises(TemplateError, match="alternate"):
            official_render(OFFICIAL_FILES[name][0][0], messages, False, **OFFICIAL_FILES[name][1])


def test_the_same_as_transformers_apply_chat_template(tokenizer):
    """A cross-check of the plain-jinja2 rendering above: transformers renders the official text the same."""
    for conv in ("system_multi_turn", "unicode", "whitespace", "open_question"):
        messages = CONVERSATIONS[conv]
        for prompt in (False, True):
            got = tokenizer.apply_chat_template(messages, chat_template=(OFFICIAL / "chatml.jinja").read_text(),
                                                tokenize=False, add_generation_prompt=prompt)
            assert got == ours("chatml", tokenizer, messages, prompt)
            assert got == official_render("chatml", messages, prompt)


# ---------------------------------------------------------------- alpaca and vicuna: the reference formats
ALPACA_PRE = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
              "request.")
VICUNA_PRE = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
              "detailed, and polite answers to the user's questions.")


def test_alpaca_reference_format(tokenizer):
    eos = tokenizer.eos_token
    conv = [U("List three primes."), A("2, 3, 5")]
    assert ours("alpaca", tokenizer, conv, False) == (
        f"{ALPACA_PRE}\n\n### Instruction:\nList three primes.\n\n### Response:\n2, 3, 5{eos}")
    assert ours("alpaca", tokenizer, conv[:1], True) == (
        f"{ALPACA_PRE}\n\n### Instruction:\nList three primes.\n\n### Response:\n")
    multi = [S("Custom preamble."), U("a"), A("b"), U("c"), A("d ü 🙂")]
    assert ours("alpaca", tokenizer, multi, False) == (
        f"Custom preamble.\n\n### Instruction:\na\n\n### Response:\nb{eos}\n\n### Instruction:\nc\n\n### Response:\nd ü 🙂{eos}")


def test_vicuna_reference_format(tokenizer):
    eos = tokenizer.eos_token
    conv = CONVERSATIONS["no_system"]
    assert ours("vicuna", tokenizer, conv, False) == (
        f"{VICUNA_PRE} USER: Convert 72 degrees Fahrenheit to Celsius. ASSISTANT: 72 °F is about 22.2 °C.{eos}"
        f"USER: And 0 °C in Kelvin? ASSISTANT: 273.15 K.{eos}")
    assert ours("vicuna", tokenizer, [S("Sys."), U("Hi")], True) == "Sys. USER: Hi ASSISTANT:"


# ---------------------------------------------------------------- special tokens
def test_missing_special_tokens_are_added_to_the_tokenizer_and_the_model():
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer()
    template = ct.Llama31()
    vocab = tokenizer.get_vocab()
    assert not any(t in vocab for t in template.special_tokens)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id)
    before = len(tokenizer)

    text = prepare_tokenizer(template, tokenizer, model)

    assert text == template.template
    assert len(tokenizer) == before + len(template.special_tokens)
    for token in template.special_tokens:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert ids == [tokenizer.convert_tokens_to_ids(token)], token  # one token, not pieces
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
    stop_id = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert tokenizer.eos_token == "<|eot_id|>"
    assert model.generation_config.eos_token_id[0] == stop_id
    assert tokenizer.chat_template == template.template
    rendered = render(text, [U("hi"), A("yo")], **template_variables(tokenizer, template))
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|begin_of_text|>") and ids[-1] == stop_id


@pytest.mark.parametrize("name", ["phi-3", "gemma", "zephyr", "qwen-2.5"])
def test_special_tokens_of_other_families_are_added(name):
    tokenizer = make_tokenizer()
    template = BY_NAME[name]()
    prepare_tokenizer(template, tokenizer)
    vocab = tokenizer.get_vocab()
    assert all(t in vocab for t in template.special_tokens)
    assert tokenizer.eos_token == template.stop_token


def test_tokens_the_tokenizer_has_are_not_added_again():
    tokenizer = make_tokenizer()
    before = len(tokenizer)
    prepare_tokenizer(ct.ChatML(), tokenizer)
    assert len(tokenizer) == before
    prepare_tokenizer(ct.TokenizerTemplate(), tokenizer)
    assert len(tokenizer) == before and tokenizer.eos_token == "<|im_end|>"


def test_a_system_turn_in_the_middle_is_treated_as_the_official_templates_treat_it(tokenizer):
    """ShareGPT keeps system turns wherever they are: Llama-2's template skips one after the first turn,
    Mistral's refuses it; neither renders it as an answer."""
    messages = [U("q1"), S("mid-conversation system"), U("q2"), A("a2")]
    expected = official_render("llama-2", messages, False, **OFFICIAL_FILES["llama-2"][1])
    assert ours("llama-2", tokenizer, messages, False) == expected
    assert "mid-conversation" not in expected
    for render_it in (lambda: ours("mistral", tokenizer, messages, False),
                      lambda: official_render("mistral", messages, False, **OFFICIAL_FILES["mistral"][1])):
        with pytest.raises(TemplateError, match="Only user and assistant roles are supported"):
            render_it()


def test_alpaca_rows_with_an_input_get_alpacas_input_prompt(tokenizer):
    """alpaca-lora's prompt_input: its own preamble and a ### Input: section (the standardizer keeps the input)."""
    from recipetune_plugins.chat_templates import ALPACA_INPUT_SYSTEM
    from recipetune_plugins.standardizers import Alpaca

    eos = tokenizer.eos_token
    with_input = Alpaca().standardize({"instruction": "Add the numbers.", "input": "2 3", "output": "5"})
    assert with_input[0]["content"] == "Add the numbers.\n\n2 3"  # what every other template sees
    assert ours("alpaca", tokenizer, with_input, False) == (
        f"{ALPACA_INPUT_SYSTEM}\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2 3\n\n### Response:\n5{eos}")
    without = Alpaca().standardize({"instruction": "Say hi.", "input": "", "output": "hi"})
    assert ours("alpaca", tokenizer, without, False) == f"{ALPACA_PRE}\n\n### Instruction:\nSay hi.\n\n### Response:\nhi{eos}"
