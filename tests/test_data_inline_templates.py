"""Chat templates written in the recipe (``chat_template = { jinja = \"\"\"...\"\"\", stop_token = "..." }``) or in a
``.jinja`` file: the same samples, masks and stop-token checks as the same template built in, rendered in the same
sandbox, and exported the same way (GGUF metadata, Modelfile)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipetune import RecipeError, load_recipe
from recipetune.data.pipeline import build_dataset, check_stop_token, prepare_tokenizer
from recipetune_plugins import chat_templates as ct

OFFICIAL = Path(__file__).parent / "data" / "official_templates"
ROWS = [
    {"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Capital of Peru?"},
                  {"role": "assistant", "content": "Lima."}, {"role": "user", "content": "And of Chile?"},
                  {"role": "assistant", "content": "Santiago."}]},
    {"messages": [{"role": "user", "content": "Ünïcödé 🎉?"}, {"role": "assistant", "content": "Oui — 😀"}]},
    {"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
     "messages": [{"role": "user", "content": "Find x."},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"x\"}"}}]},
                  {"role": "tool", "content": "x = 4"}, {"role": "assistant", "content": "x is 4."}]},
]


pytestmark = pytest.mark.usefixtures("private_cache")  # conftest.py: tokenizer_dir, tok, private_cache


def recipe_path(folder: Path, tokenizer_dir: Path, template: str, rows=ROWS) -> Path:
    data = folder / "chat.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    path = folder / "recipe.toml"
    path.write_text(f"""name = "inline"
[load]
use = "hf"
model = "{tokenizer_dir}"
max_seq_length = 2048
[format]
dataset = "chat.jsonl"
standardizer = "messages"
chat_template = {template}
cache = false
[train]
use = "sft"
max_steps = 1
warmup_steps = 0
""", encoding="utf-8")
    return path


def samples(folder, tokenizer_dir, template, rows=ROWS):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ds = build_dataset(load_recipe(recipe_path(folder, tokenizer_dir, template, rows)), tokenizer)
    return ds, tokenizer


def toml_string(text: str) -> str:
    return '"""\n' + text.replace("\\", "\\\\").replace('"""', '\\"""') + '"""'


@pytest.mark.parametrize("builtin,inline", [
    ("chatml", lambda: "{ jinja = " + toml_string(ct.ChatML.template) + ', stop_token = "<|im_end|>", '
               'special_tokens = ["<|im_start|>", "<|im_end|>"] }'),
    ("qwen-2.5", lambda: f'{{ path = "{OFFICIAL / "qwen-2.5.jinja"}", stop_token = "<|im_end|>", '
                 'special_tokens = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"] }'),
])
def test_an_inline_template_gives_the_samples_of_the_same_template_built_in(tmp_path, tokenizer_dir, builtin, inline):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    built, tok_a = samples(tmp_path / "a", tokenizer_dir, f'"{builtin}"')
    written, tok_b = samples(tmp_path / "b", tokenizer_dir, inline())
    rows = ROWS if builtin == "qwen-2.5" else ROWS[:2]  # ChatML writes no tool calls: that row is a template_error
    assert len(built.train) == len(written.train) == len(rows)
    assert list(built.train) == list(written.train)  # ids, labels (the loss mask) and text, sample by sample
    for key in ("tokens", "trained_tokens", "stop_token", "stop_token_id", "samples_with_trained_stop_token"):
        assert built.stats[key] == written.stats[key], key
    assert tok_a.eos_token == tok_b.eos_token == "<|im_end|>"


def test_a_jinja_file_path_is_the_short_form(tmp_path, tokenizer_dir):
    (tmp_path / "chatml.jinja").write_text(ct.ChatML.template, encoding="utf-8")
    recipe = load_recipe(recipe_path(tmp_path, tokenizer_dir, '"chatml.jinja"'))
    assert recipe.chat_template.use == "inline"
    assert recipe.chat_template.component.template == ct.ChatML.template
    assert recipe.resolved()["format"]["chat_template"]["path"] == str(tmp_path / "chatml.jinja")


def test_the_same_checks_as_a_builtin_template(tmp_path, tokenizer_dir):
    """A template that never writes its stop token gets the loud stop-token warning; one that rewrites earlier
    answers has its conversations dropped as template_error, never trained with a wrong mask."""
    no_stop = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    ds, _ = samples(tmp_path, tokenizer_dir, "{ jinja = " + toml_string(no_stop) + ', stop_token = "<|im_end|>" }',
                    ROWS[:2])
    warning = check_stop_token(ds.stats, "assistant")
    assert warning and "is not among the trained tokens of any sample" in warning
    rewrites = ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}[earlier answer]"
                "{% else %}{{ m['content'] }}{% endif %}<|im_end|>{% endfor %}")
    ds, _ = samples(tmp_path, tokenizer_dir, "{ jinja = " + toml_string(rewrites) + ', stop_token = "<|im_end|>" }',
                    ROWS[:2])
    assert ds.stats["dropped_template_error"] == 1 and len(ds.train) == 1


def test_the_sandbox_holds_for_inline_templates(tmp_path, tokenizer_dir):
    escape = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    ds_error = None
    try:
        samples(tmp_path, tokenizer_dir, "{ jinja = " + toml_string(escape) + ' }', ROWS[:1])
    except Exception as exc:  # every row fails to render: nothing left to train on
        ds_error = str(exc)
    assert ds_error and "template_error" in ds_error and "unsafe" in ds_error


@pytest.mark.parametrize("template,message", [
    ('{ jinja = "{% for m in messages %}{{ m.content }" }', "not valid Jinja"),
    ('{ jinja = "x", path = "t.jinja" }', "one of them"),
    ('{ stop_token = "<|im_end|>", path = "missing.jinja" }', "no such file"),
    ('"missing.jinja"', "no such file"),
])
def test_a_broken_inline_template_is_a_recipe_error_at_its_line(tmp_path, tokenizer_dir, template, message):
    (tmp_path / "t.jinja").write_text("x", encoding="utf-8")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe_path(tmp_path, tokenizer_dir, template))
    [problem] = [p for p in info.value.problems if p.severity == "error"]
    assert problem.line == 9 and problem.path.startswith("format.chat_template") and message in problem.message


def test_the_template_is_exported_with_the_model(tmp_path):
    """What a GGUF export writes: the tokenizer's template (the inline text) in the metadata, and a Modelfile whose
    Go template is chosen from it."""
    gguf = pytest.importorskip("gguf")
    from recipetune_plugins.gguf.modelfile import modelfile_text
    from recipetune_plugins.gguf.vocab import vocab_metadata
    from recipetune_plugins.gguf.writer import write_gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipetune.testing import make_tiny_llama

    folder = make_tiny_llama(tmp_path / "m")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    text = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    template = ct.InlineTemplate(ct.InlineTemplate.Options(jinja=text, stop_token="<|im_end|>"))
    assert prepare_tokenizer(template, tokenizer, model) == text
    assert tokenizer.chat_template == text and tokenizer.eos_token == "<|im_end|>"
    vocab = vocab_metadata(tokenizer, model.get_input_embeddings().weight.shape[0], tokenizer.eos_token)
    path = write_gguf(model, vocab, tmp_path / "m.gguf", "f32", name="m", chat_template=tokenizer.chat_template,
                      base_model="m", recipe_sha256="0" * 64)
    assert gguf.GGUFReader(str(path)).fields["tokenizer.chat_template"].contents() == text
    modelfile = modelfile_text("m.gguf", tokenizer.chat_template, ["<|im_end|>"], 256)
    assert "<|im_start|>{{ .Role }}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
