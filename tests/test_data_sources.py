"""From rows to samples: every standardizer, column mapping, row operations in order, splits, malformed data,
the cache, and ``recipe data`` on the command line. Everything goes through ``build_dataset``, the format
stage's own code, with a tiny tokenizer built here and the ChatML template (easy to read back)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import run_cli

from recipetune import RecipeError, UserError, load_recipe
from recipetune.data.pipeline import build_dataset
from recipetune.testing import make_tokenizer


pytestmark = pytest.mark.usefixtures("private_cache")  # conftest.py: tokenizer_dir, tok, private_cache


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def recipe_text(tokenizer_dir: Path, data: Path, fmt: str = "", standardizer: str = '"sharegpt"',
                name: str = "data-test", cache: bool = False) -> str:
    return f"""
name = "{name}"
seed = 11

[load]
use = "hf"
model = "{tokenizer_dir}"
max_seq_length = 256

[adapt]
use = "lora"

[format]
dataset = "{data}"
standardizer = {standardizer}
chat_template = "chatml"
cache = {str(cache).lower()}
{fmt}

[train]
use = "sft"
max_steps = 1
"""


def make_recipe(tmp_path: Path, tokenizer_dir: Path, rows=None, fmt: str = "", standardizer: str = '"sharegpt"',
                data: Path | None = None, cache: bool = False):
    if data is None:
        data = write_jsonl(tmp_path / "data.jsonl", rows)
    path = tmp_path / "recipe.toml"
    path.write_text(recipe_text(tokenizer_dir, data, fmt, standardizer, cache=cache), encoding="utf-8")
    return load_recipe(path)


def chat(i: int, system: str | None = None, answer: str | None = None) -> list[dict[str, str]]:
    turns = [{"from": "system", "value": system}] if system else []
    return turns + [{"from": "human", "value": f"Question {i}?"}, {"from": "gpt", "value": answer or f"Answer {i}."}]


def texts(dataset) -> list[str]:
    return [s["text"] for s in dataset.train]


def chatml(*turns: tuple[str, str]) -> str:
    return "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)


# ---------------------------------------------------------------- standardizers
def test_sharegpt_from_value_and_role_content(tmp_path, tokenizer_dir, tok):
    rows = [{"conversations": chat(0, system="Be kind.")},
            {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
            {"conversations": [{"from": "prompter", "value": "Q"}, {"from": "chatgpt", "value": "A"}]}]
    ds = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows), tok)
    assert texts(ds) == [chatml(("system", "Be kind."), ("user", "Question 0?"), ("assistant", "Answer 0.")),
                         chatml(("user", "Hi"), ("assistant", "Hello")),
                         chatml(("user", "Q"), ("assistant", "A"))]
    assert ds.stats["standardizer"] == "sharegpt" and ds.stats["samples"] == 3


def test_messages(tmp_path, tokenizer_dir, tok):
    rows = [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                          {"role": "assistant", "content": "A"}]}]
    ds = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, standardizer='"messages"'), tok)
    assert texts(ds) == [chatml(("system", "S"), ("user", "U"), ("assistant", "A"))]


def test_alpaca_with_and_without_input(tmp_path, tokenizer_dir, tok):
    rows = [{"instruction": "Add", "input": "2 and 3", "output": "5"},
            {"instruction": "Greet", "input": "", "output": "Hi"},
            {"instruction": "Greet", "output": "Hey"}]
    ds = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, standardizer='"alpaca"'), tok)
    assert texts(ds) == [chatml(("user", "Add\n\n2 and 3"), ("assistant", "5")),
                         chatml(("user", "Greet"), ("assistant", "Hi")),
                         chatml(("user", "Greet"), ("assistant", "Hey"))]


def test_prompt_completion_strings_and_message_lists(tmp_path, tokenizer_dir, tok):
    rows = [{"prompt": "Capital of France?", "completion": "Paris."},
            {"prompt": [{"role": "system", "content": "Terse."}, {"role": "user", "content": "2+2?"}],
             "completion": [{"role": "assistant", "content": "4"}]}]
    ds = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, standardizer='"prompt_completion"'), tok)
    assert texts(ds) == [chatml(("user", "Capital of France?"), ("assistant", "Paris.")),
                         chatml(("system", "Terse."), ("user", "2+2?"), ("assistant", "4"))]


def test_text_trains_every_token_and_ends_with_eos(tmp_path, tokenizer_dir, tok):
    rows = [{"text": "The quick brown fox."}, {"text": "   "}, {"text": "Hello world!"}]
    ds = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, standardizer='"text"'), tok)
    assert texts(ds) == ["The quick brown fox.<|im_end|>", "Hello world!<|im_end|>"]
    for sample in ds.train:
        assert sample["labels"] == sample["input_ids"]
    assert ds.stats["dropped_malformed"] == 1  # the blank one


@pytest.mark.parametrize("rows,chosen", [
    ([{"conversations": chat(1)}], "sharegpt"),
    ([{"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}], "messages"),
    ([{"instruction": "i", "output": "o"}], "alpaca"),
    ([{"prompt": "p", "completion": "c"}], "prompt_completion"),
    ([{"text": "plain text"}], "text"),
])
def test_auto_detects_and_says_which_it_chose(tmp_path, tokenizer_dir, tok, caplog, rows, chosen):
    with caplog.at_level(logging.INFO, logger="recipetune"):
        ds = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows * 3, standardizer='"auto"'), tok)
    assert ds.stats["standardizer"] == chosen
    assert f"format.standardizer auto: the rows look like '{chosen}'; using it" in caplog.text


def test_auto_that_recognises_nothing_names_the_columns(tmp_path, tokenizer_dir, tok):
    recipe = make_recipe(tmp_path, tokenizer_dir, [{"question": "q", "answer": "a"}], standardizer='"auto"')
    with pytest.raises(UserError, match=r"recognised none of .* \(columns: answer, question\)"):
        build_dataset(recipe, tok)


# ---------------------------------------------------------------- column mapping
def test_column_mapping(tmp_path, tokenizer_dir, tok):
    rows = [{"question": "Why?", "context": "Because.", "answer": "So.", "persona": "Be wise."}]
    ds = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, standardizer=(
        '{ use = "alpaca", instruction = "question", input = "context", output = "answer", system = "persona" }')), tok)
    assert texts(ds) == [chatml(("system", "Be wise."), ("user", "Why?\n\nBecause."), ("assistant", "So."))]

    rows = [{"dialog": [{"speaker": "customer", "text": "Broken."}, {"speaker": "bot", "text": "Sorry!"}]}]
    ds = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, standardizer=(
        '{ use = "sharegpt", column = "dialog", role_key = "speaker", content_key = "text", '
        'roles = { customer = "user", bot = "assistant" } }')), tok)
    assert texts(ds) == [chatml(("user", "Broken."), ("assistant", "Sorry!"))]

    rows = [{"q": "a?", "a": "b."}]
    ds = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, standardizer=(
        '{ use = "prompt_completion", prompt = "q", completion = "a" }')), tok)
    assert texts(ds) == [chatml(("user", "a?"), ("assistant", "b."))]


def test_an_unknown_standardizer_option_is_a_recipe_error(tmp_path, tokenizer_dir):
    with pytest.raises(RecipeError) as info:
        make_recipe(tmp_path, tokenizer_dir, [{}], standardizer='{ use = "alpaca", instructoin = "q" }')
    assert "instructoin" in str(info.value.problems[0].render())


# ---------------------------------------------------------------- row operations
def sources_rows():
    rows = []
    for i in range(12):
        rows.append({"conversations": chat(i, system="Old system." if i % 2 else None),
                     "source": "web" if i % 3 else "books", "score": i})
    rows.append({"conversations": chat(1, system="Old system."), "source": "web", "score": 1})  # duplicate of 1
    rows.append({"conversations": chat(99, answer="   "), "source": "web", "score": 99})  # empty answer
    rows.append({"conversations": [{"from": "human", "value": "no answer"}], "source": "web", "score": 0})  # malformed
    rows.append({"conversations": "not a list", "source": "web", "score": 0})  # malformed
    return rows


OPS_SYSTEM = """
[[format.ops]]
op = "system_prompt"
content = "{content}"
mode = "{mode}"
"""


def test_system_prompt_inject_and_replace(tmp_path, tokenizer_dir, tok):
    rows = [{"conversations": chat(0)}, {"conversations": chat(1, system="Old.")}]
    inject = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, OPS_SYSTEM.format(content="New.", mode="inject")), tok)
    assert [t.split("<|im_end|>")[0] for t in texts(inject)] == ["<|im_start|>system\nNew.", "<|im_start|>system\nOld."]
    replace = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, OPS_SYSTEM.format(content="New.", mode="replace")), tok)
    assert [t.split("<|im_end|>")[0] for t in texts(replace)] == ["<|im_start|>system\nNew."] * 2
    assert all(t.count("<|im_start|>system") == 1 for t in texts(replace))


@pytest.mark.parametrize("test,kept", [
    ('equals = "books"', [0, 3, 6, 9]),
    ('not_equals = "books"', [1, 2, 4, 5, 7, 8, 10, 11, 1, 99]),
    ('in = ["books"]', [0, 3, 6, 9]),
    ('not_in = ["web", "books"]', []),
])
def test_filter_by_column_value(tmp_path, tokenizer_dir, tok, test, kept):
    ops = f'[[format.ops]]\nop = "filter"\ncolumn = "source"\n{test}\n'
    recipe = make_recipe(tmp_path, tokenizer_dir, sources_rows(), ops)
    if not kept:
        with pytest.raises(UserError, match="no sample is left to train on"):
            build_dataset(recipe, tok)
        return
    ds = build_dataset(recipe, tok)
    assert [int(t.split("Question ")[1].split("?")[0]) for t in texts(ds)] == kept
    assert ds.stats["dropped_filtered"] == 14 - len(kept)
    assert ds.stats["dropped_malformed"] == 2


def test_filter_on_a_missing_column_names_the_columns(tmp_path, tokenizer_dir, tok):
    ops = '[[format.ops]]\nop = "filter"\ncolumn = "lang"\nequals = "en"\n'
    with pytest.raises(UserError, match='filter column "lang" is not in the dataset; its columns are: conversations, '
                                        'score, source'):
        build_dataset(make_recipe(tmp_path, tokenizer_dir, sources_rows(), ops), tok)


def test_drop_empty_dedupe_and_counts(tmp_path, tokenizer_dir, tok):
    ops = '[[format.ops]]\nop = "drop_empty"\n[[format.ops]]\nop = "dedupe"\n'
    ds = build_dataset(make_recipe(tmp_path, tokenizer_dir, sources_rows(), ops), tok)
    s = ds.stats
    assert (s["rows"], s["samples"], s["dropped_malformed"], s["dropped_empty"], s["dropped_duplicate"]) == (16, 12, 2, 1, 1)
    assert len(set(texts(ds))) == 12


def test_dedupe_by_prompt(tmp_path, tokenizer_dir, tok):
    rows = [{"conversations": chat(1, answer="A")}, {"conversations": chat(1, answer="B")}, {"conversations": chat(2)}]
    by_conv = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, '[[format.ops]]\nop = "dedupe"\n'), tok)
    by_prompt = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, '[[format.ops]]\nop = "dedupe"\nby = "prompt"\n'), tok)
    assert by_conv.stats["samples"] == 3 and by_prompt.stats["samples"] == 2


def test_ops_apply_in_the_order_written(tmp_path, tokenizer_dir, tok):
    rows = [{"conversations": chat(i % 2)} for i in range(6)]  # 0, 1, 0, 1, 0, 1
    limit_then_dedupe = '[[format.ops]]\nop = "limit"\nn = 3\n[[format.ops]]\nop = "dedupe"\n'
    dedupe_then_limit = '[[format.ops]]\nop = "dedupe"\n[[format.ops]]\nop = "limit"\nn = 3\n'
    a = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, limit_then_dedupe), tok).stats
    b = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, dedupe_then_limit), tok).stats
    assert (a["samples"], a["dropped_limit"], a["dropped_duplicate"]) == (2, 3, 1)
    assert (b["samples"], b["dropped_duplicate"]) == (2, 4) and "dropped_limit" not in b
    # a system prompt set after a filter on the raw columns still applies to the kept rows
    ops = ('[[format.ops]]\nop = "filter"\ncolumn = "source"\nequals = "books"\n'
           + OPS_SYSTEM.format(content="Librarian.", mode="replace") + '[[format.ops]]\nop = "limit"\nn = 2\n')
    ds = build_dataset(make_recipe(tmp_path, tokenizer_dir, sources_rows(), ops), tok)
    assert [t.split("<|im_end|>")[0] for t in texts(ds)] == ["<|im_start|>system\nLibrarian."] * 2
    assert "Question 0?" in texts(ds)[0] and "Question 3?" in texts(ds)[1]


def test_shuffle_is_seeded(tmp_path, tokenizer_dir, tok):
    rows = [{"conversations": chat(i)} for i in range(30)]
    order = lambda ops: texts(build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, ops), tok))  # noqa: E731
    plain = order("")
    seeded = order('[[format.ops]]\nop = "shuffle"\nseed = 5\n')
    assert seeded == order('[[format.ops]]\nop = "shuffle"\nseed = 5\n')
    assert seeded != plain and sorted(seeded) == sorted(plain)
    assert order('[[format.ops]]\nop = "shuffle"\nseed = 6\n') != seeded
    default = order('[[format.ops]]\nop = "shuffle"\n')  # the recipe's seed
    assert default == order('[[format.ops]]\nop = "shuffle"\nseed = 11\n')


def test_format_limit_and_shuffle_seed_before_ops(tmp_path, tokenizer_dir, tok):
    rows = [{"conversations": chat(i)} for i in range(30)]
    ds = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, "limit = 4"), tok)
    assert [f"Question {i}?" in t for i, t in enumerate(texts(ds))] == [True] * 4 and ds.stats["read"] == 4
    shuffled = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, "limit = 4\nshuffle_seed = 3"), tok)
    assert texts(shuffled) != texts(ds) and shuffled.stats["rows"] == 30


def test_too_long_drop_and_truncate_are_counted(tmp_path, tokenizer_dir, tok):
    rows = [{"conversations": chat(i)} for i in range(5)] + [{"conversations": chat(9, answer="word " * 80)}] * 2
    dropped = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, 'max_seq_length = 60\ntoo_long = "drop"'), tok)
    assert dropped.stats["samples"] == 5 and dropped.stats["dropped_too_long"] == 2 and dropped.stats["truncated"] == 0
    cut = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, 'max_seq_length = 60\ntoo_long = "truncate"'), tok)
    assert cut.stats["samples"] == 7 and cut.stats["truncated"] == 2 and "dropped_too_long" not in cut.stats
    assert cut.stats["max_length"] == 60 and max(len(s["input_ids"]) for s in cut.train) == 60


# ---------------------------------------------------------------- splits
def test_split_by_fraction_is_seeded_and_disjoint(tmp_path, tokenizer_dir, tok):
    rows = [{"conversations": chat(i)} for i in range(40)]
    fmt = "validation_fraction = 0.25\ntest_fraction = 0.1"
    ds = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, fmt), tok)
    train, val, test = texts(ds), [s["text"] for s in ds.validation], [s["text"] for s in ds.test]
    assert (len(train), len(val), len(test)) == (26, 10, 4)
    assert (ds.stats["samples"], ds.stats["validation"], ds.stats["test"]) == (26, 10, 4)
    assert len(set(train) | set(val) | set(test)) == 40
    again = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, fmt), tok)
    assert [s["text"] for s in again.validation] == val
    other = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, fmt + "\nsplit_seed = 1"), tok)
    assert [s["text"] for s in other.validation] != val


def test_split_by_name(tmp_path, tokenizer_dir, tok):
    data = tmp_path / "splits.json"
    data.write_text(json.dumps({"train": [{"conversations": chat(i)} for i in range(6)],
                                "validation": [{"conversations": chat(100 + i)} for i in range(2)],
                                "test": [{"conversations": chat(200)}]}), encoding="utf-8")
    ds = build_dataset(make_recipe(tmp_path, tokenizer_dir, fmt='validation_split = "validation"\ntest_split = "test"',
                                   data=data), tok)
    assert len(ds.train) == 6 and [s["text"].count("Question 10") for s in ds.validation] == [1, 1]
    assert "Question 200?" in ds.test[0]["text"]


def test_a_named_split_the_file_lacks_is_an_error(tmp_path, tokenizer_dir, tok):
    data = tmp_path / "splits.json"
    data.write_text(json.dumps({"train": [{"conversations": chat(0)}], "test": [{"conversations": chat(1)}]}))
    recipe = make_recipe(tmp_path, tokenizer_dir, fmt='validation_split = "validaton"', data=data)
    with pytest.raises(UserError, match=r"splits.json: no split 'validaton'; the file's splits are: train, test"):
        build_dataset(recipe, tok)
    recipe = make_recipe(tmp_path, tokenizer_dir, [{"conversations": chat(0)}], fmt='validation_split = "test"')
    with pytest.raises(UserError, match=r"data.jsonl: a local .jsonl file has one split, \"train\"; it has no split 'test'"):
        build_dataset(recipe, tok)


# ---------------------------------------------------------------- malformed data
@pytest.mark.parametrize("content,message", [
    ('{"conversations": []}\n{"conversations": [oops]}\n', r"data.jsonl:2: not valid JSON: Expecting value"),
    ('{"a": 1}\n\n["a", "list"]\n', r"data.jsonl:3: expected one JSON object per line, got a list"),
    ('{"a": 1}\n42\n', r"data.jsonl:2: expected one JSON object per line, got a number"),
])
def test_bad_jsonl_names_the_file_and_line(tmp_path, tokenizer_dir, tok, content, message):
    data = tmp_path / "data.jsonl"
    data.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        build_dataset(make_recipe(tmp_path, tokenizer_dir, data=data), tok)


def test_bad_json_and_non_utf8_name_the_place(tmp_path, tokenizer_dir, tok):
    data = tmp_path / "data.json"
    data.write_text('[\n  {"conversations": []},\n  {"conversations": }\n]', encoding="utf-8")
    with pytest.raises(UserError, match=r"data.json:3:21: not valid JSON"):
        build_dataset(make_recipe(tmp_path, tokenizer_dir, data=data), tok)
    data.write_text('[{"a": 1}, "row"]', encoding="utf-8")
    with pytest.raises(UserError, match=r"data.json: row 2 \(split 'train'\) is a string, not an object"):
        build_dataset(make_recipe(tmp_path, tokenizer_dir, data=data), tok)
    binary = tmp_path / "data.jsonl"
    binary.write_bytes(b'{"a": 1}\n{"b": "\xff\xfe"}\n')
    with pytest.raises(UserError, match=r"data.jsonl:2: not UTF-8 text"):
        build_dataset(make_recipe(tmp_path, tokenizer_dir, data=binary), tok)


def test_missing_columns_name_the_file_and_show_a_row(tmp_path, tokenizer_dir, tok):
    rows = [{"question": "q", "reply": "a"}] * 3
    recipe = make_recipe(tmp_path, tokenizer_dir, rows, standardizer='"alpaca"')
    with pytest.raises(UserError) as info:
        build_dataset(recipe, tok)
    message = str(info.value)
    assert "data.jsonl: no row could be read as 'alpaca' (3 rows, all malformed; columns of the first: question, reply)" in message
    assert 'First row read: {"question": "q", "reply": "a"}' in message


def test_wrong_types_are_counted_or_explained(tmp_path, tokenizer_dir, tok):
    rows = [{"conversations": chat(0)}, {"conversations": [{"from": "human", "value": 5}, {"from": "gpt", "value": "x"}]},
            {"conversations": {"from": "human"}}, {"conversations": [["human", "hi"]]},
            {"conversations": [{"from": "alien", "value": "?"}, {"from": "gpt", "value": "x"}]}]
    ds = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows), tok)
    assert ds.stats["samples"] == 1 and ds.stats["dropped_malformed"] == 4
    with pytest.raises(UserError, match=r"no row could be read as 'sharegpt' \(4 rows, all malformed"):
        build_dataset(make_recipe(tmp_path, tokenizer_dir, rows[1:]), tok)


def test_the_cli_shows_the_error_without_a_traceback(tmp_path, tokenizer_dir):
    data = tmp_path / "data.jsonl"
    data.write_text('{"conversations": []}\n{bad\n', encoding="utf-8")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(recipe_text(tokenizer_dir, data), encoding="utf-8")
    result = run_cli("data", str(recipe), "--output-dir", str(tmp_path / "out"))
    assert result.returncode != 0
    assert f"error: {data}:2: not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- the cache
def test_cache_reused_and_invalidated(tmp_path, tokenizer_dir, tok):
    rows = [{"conversations": chat(i)} for i in range(20)]
    data = write_jsonl(tmp_path / "data.jsonl", rows)

    def run(fmt="", tokenizer=None):
        recipe = make_recipe(tmp_path, tokenizer_dir, fmt=fmt, data=data, cache=True)
        assert recipe.format.cache
        return build_dataset(recipe, tokenizer or tok)

    first = run()
    assert first.stats["cache"] == "miss"
    second = run()
    assert second.stats["cache"] == "hit"
    assert list(second.train) == list(first.train) and second.stats["samples"] == first.stats["samples"]
    assert len(list((tmp_path / "cache" / "data").glob("*.npz"))) == 1

    assert run('train_on = "all"').stats["cache"] == "miss"  # the recipe changed
    assert run('train_on = "all"').stats["cache"] == "hit"
    other = make_tokenizer(vocab_size=400)  # another tokenizer
    assert run(tokenizer=other).stats["cache"] == "miss"
    grown = make_tokenizer()
    grown.add_special_tokens({"additional_special_tokens": ["<|tool|>"]})  # same vocabulary plus one token
    assert run(tokenizer=grown).stats["cache"] == "miss"
    assert run().stats["cache"] == "hit"
    write_jsonl(data, rows[:10])  # the data changed
    changed = run()
    assert changed.stats["cache"] == "miss" and changed.stats["samples"] == 10
    assert build_dataset(make_recipe(tmp_path, tokenizer_dir, data=data, cache=True), tok,
                         use_cache=False).stats["cache"] == "off"


# ---------------------------------------------------------------- recipe data
@pytest.fixture(scope="module")
def cli_recipe(tmp_path_factory, tokenizer_dir) -> Path:
    root = tmp_path_factory.mktemp("cli")
    rows = [{"conversations": chat(i, system="Be brief." if i % 2 else None), "source": "web"} for i in range(30)]
    rows.append({"conversations": "broken"})
    data = write_jsonl(root / "data.jsonl", rows)
    recipe = root / "recipe.toml"
    recipe.write_text(recipe_text(tokenizer_dir, data, "validation_fraction = 0.2"), encoding="utf-8")
    return recipe


def test_recipe_data_limit(cli_recipe, tmp_path):
    out = tmp_path / "out"
    result = run_cli("data", str(cli_recipe), "--limit", "11", "--samples", "1", "--output-dir", str(out),
                     env={"RECIPETUNE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "── sample 0 (" in text
    # trained tokens marked: the answer and its stop token, not the user turn or the headers
    assert "<|im_start|>user\nQuestion 0?<|im_end|>\n<|im_start|>assistant\n⟦Answer 0.<|im_end|>⟧\n" in text
    assert "rows 31 · read 11 · standardizer sharegpt · kept 11 (train 9, validation 2, test 0)" in text
    assert "dropped: none" in text and "stop token '<|im_end|>' trained in 9 of 9 samples" in text
    assert "token lengths:" in text and f"histogram: {out / 'length_histogram.png'}" in text
    png = (out / "length_histogram.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_recipe_data_json(cli_recipe, tmp_path):
    out = tmp_path / "out"
    result = run_cli("data", str(cli_recipe), "--json", "--samples", "2", "--output-dir", str(out),
                     env={"RECIPETUNE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    stats = report["stats"]
    assert (stats["rows"], stats["read"], stats["kept"], stats["samples"], stats["validation"]) == (31, 31, 30, 24, 6)
    assert report["dropped"] == {"malformed": 1}
    assert report["dropped_examples"]["malformed"] == "not readable as 'sharegpt': row 31: {\"conversations\": \"broken\"}"
    assert stats["standardizer"] == "sharegpt" and stats["stop_token"] == "<|im_end|>"
    assert stats["samples_with_trained_stop_token"] == 24 and report["stop_token_warning"] is None
    assert sum(h["count"] for h in report["histogram"]) == 30
    assert report["histogram_png"] == str(out / "length_histogram.png") and Path(report["histogram_png"]).exists()
    first = report["samples"][0]
    assert len(report["samples"]) == 2 and first["trained"][0].endswith("<|im_end|>")
    assert [t for t, x in zip(first["input_ids"], first["labels"]) if x != -100]


def test_several_processes_give_the_same_samples(tmp_path, tokenizer_dir, tok):
    """Above MIN_PARALLEL conversations the format stage forks workers: same samples, same order."""
    from recipetune.data.encode import MIN_PARALLEL

    rows = [{"conversations": chat(i, system="Sé breve 🙂." if i % 5 == 0 else None,
                                   answer=f"Answer {i} — ünïcödé {i * 7}.")} for i in range(MIN_PARALLEL + 300)]
    data = write_jsonl(tmp_path / "many.jsonl", rows)
    one = build_dataset(make_recipe(tmp_path, tokenizer_dir, fmt="num_proc = 1", data=data), tok)
    two = build_dataset(make_recipe(tmp_path, tokenizer_dir, fmt="num_proc = 2", data=data), tok)
    assert len(two.train) == len(rows)
    assert (two.train.ids == one.train.ids).all() and (two.train.labels == one.train.labels).all()
    assert (two.train.offsets == one.train.offsets).all() and two.train.texts == one.train.texts
    assert two.stats["samples_with_trained_stop_token"] == len(rows)


def test_a_named_split_that_is_all_malformed_is_an_error(tmp_path, tokenizer_dir, tok):
    data = tmp_path / "splits.json"
    data.write_text(json.dumps({"train": [{"conversations": chat(0)}], "validation": [{"text": "no turns"}] * 2}))
    recipe = make_recipe(tmp_path, tokenizer_dir, fmt='validation_split = "validation"', data=data)
    with pytest.raises(UserError, match=r"format.validation_split = 'validation': no row could be read as 'sharegpt' "
                                        r"\(2 rows, all malformed; columns of the first: text\)"):
        build_dataset(recipe, tok)


def test_csv_cells_are_read_as_the_text_written(tmp_path, tokenizer_dir, tok):
    data = tmp_path / "data.csv"
    data.write_text("instruction,input,output\nWhat is 2 + 2?,,4\nAdd them.,1 2,3\n", encoding="utf-8")
    ds = build_dataset(make_recipe(tmp_path, tokenizer_dir, data=data, standardizer='"alpaca"'), tok)
    assert [s["text"] for s in ds.train] == [chatml(("user", "What is 2 + 2?"), ("assistant", "4")),
                                             chatml(("user", "Add them.\n\n1 2"), ("assistant", "3"))]


def test_a_role_mapping_to_an_unknown_role_is_a_recipe_error(tmp_path, tokenizer_dir, recipe_problems):
    data = write_jsonl(tmp_path / "data.jsonl", [{"conversations": chat(0)}])
    text = recipe_text(tokenizer_dir, data, standardizer='{ use = "sharegpt", roles = { bot = "asistant" } }')
    [problem] = [p for p in recipe_problems(text) if "warning" not in p]
    assert "format.standardizer.roles.bot: Input should be 'system', 'user', 'assistant' or 'tool' (got 'asistant')" in problem


def test_rows_dropped_by_operations_come_with_an_example(tmp_path, tokenizer_dir, tok):
    rows = [{"conversations": chat(i), "lang": "en" if i % 3 else "fr"} for i in range(9)] + [{"conversations": chat(1), "lang": "en"}]
    ops = '[[format.ops]]\nop = "filter"\ncolumn = "lang"\nequals = "en"\n\n[[format.ops]]\nop = "dedupe"\n'
    ds = build_dataset(make_recipe(tmp_path, tokenizer_dir, rows, fmt=ops), tok, keep_dropped=1)
    assert (ds.stats["dropped_filtered"], ds.stats["dropped_duplicate"]) == (3, 1)
    examples = ds.stats["dropped_examples"]
    assert examples["filtered"].startswith('row 1: {"conversations": [{"from": "human", "value": "Question 0?"}')
    assert examples["duplicate"].startswith("row 10: ")
