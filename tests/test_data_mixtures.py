"""Mixtures of datasets (``[[format.datasets]]``): each member read, standardized and operated on by itself, then
mixed by concatenation, exact weights or interleaving; every sample is counted back to its member, row by row.

Each member's answers carry its own marker (``[A7]``, ``[B3]``...), so a sample's text says which dataset and which
row it came from."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import run_cli

from recipetune import RecipeError, load_recipe
from recipetune.data.mixture import quotas
from recipetune.data.pipeline import build_dataset


pytestmark = pytest.mark.usefixtures("private_cache")  # tokenizer_dir, tok and private_cache: tests/conftest.py


def write_members(folder: Path, sizes=(40, 12, 20)) -> dict[str, Path]:
    """Three datasets of three formats: sharegpt (A), alpaca (B), OpenAI messages (C)."""
    a, b, c = sizes
    files = {"a": folder / "a.jsonl", "b": folder / "b.jsonl", "c": folder / "c.json"}
    files["a"].write_text("".join(json.dumps({"conversations": [
        {"from": "human", "value": f"Question {i}?"}, {"from": "gpt", "value": f"[A{i}] answer"}], "lang": "en" if i % 4 else "fr"})
        + "\n" for i in range(a)), encoding="utf-8")
    files["b"].write_text("".join(json.dumps({"question": f"Task {i}", "answer": f"[B{i}] done"}) + "\n" for i in range(b)),
                          encoding="utf-8")
    files["c"].write_text(json.dumps({
        "train": [{"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": f"[C{i}] hello"}]}
                  for i in range(c)],
        "validation": [{"messages": [{"role": "user", "content": f"Held {i}"}, {"role": "assistant", "content": f"[CV{i}] ok"}]}
                       for i in range(3)]}), encoding="utf-8")
    return files


MEMBERS = """
[[format.datasets]]
dataset = "a.jsonl"
{a}

[[format.datasets]]
dataset = "b.jsonl"
standardizer = {{ use = "alpaca", instruction = "question", output = "answer" }}
{b}

[[format.datasets]]
dataset = "c.json"
standardizer = "messages"
{c}
"""


def recipe(folder: Path, tokenizer_dir: Path, fmt: str = "", a: str = "", b: str = "", c: str = "",
           seed: int = 5, extra_members: str = "") -> Path:
    path = folder / "recipe.toml"
    path.write_text(f"""name = "mix"
seed = {seed}

[load]
use = "hf"
model = "{tokenizer_dir}"
max_seq_length = 128

[format]
standardizer = "sharegpt"
chat_template = "chatml"
cache = false
{fmt}
{MEMBERS.format(a=a, b=b, c=c)}
{extra_members}

[train]
use = "sft"
max_steps = 1
warmup_steps = 0
""", encoding="utf-8")
    return path


def origins(table) -> list[str]:
    """The member and row of each sample, read from its text: ``A7``, ``B3``, ``CV0``..."""
    return [re.search(r"\[(A|B|CV|C)(\d+)\]", s["text"]).group(0)[1:-1] for s in table]


def members_of(table) -> Counter:
    return Counter(re.match(r"[A-Z]+", o).group(0) for o in origins(table))


def test_concat_keeps_every_row_member_after_member_with_each_members_ops(tmp_path, tokenizer_dir, tok):
    write_members(tmp_path)
    ops = '[[format.datasets.ops]]\nop = "filter"\ncolumn = "lang"\nequals = "en"'
    ds = build_dataset(load_recipe(recipe(tmp_path, tokenizer_dir, a=ops)), tok)
    got = origins(ds.train)
    assert got == [f"A{i}" for i in range(40) if i % 4] + [f"B{i}" for i in range(12)] + [f"C{i}" for i in range(20)]
    assert ds.stats["mix"] == "concat" and ds.stats["standardizer"] == "sharegpt, alpaca, messages"
    assert ds.stats["dropped_filtered"] == 10 and ds.stats["read"] == 72
    a, b, c = ds.stats["datasets"]
    assert (a["name"], a["read"], a["after_ops"], a["samples"]) == ("a", 40, 30, 30)
    assert (b["standardizer"], b["samples"], c["samples"]) == ("alpaca", 12, 20)
    assert abs(a["share_samples"] - 30 / 62) < 1e-4
    # trained tokens per member, counted from the samples themselves
    trained = Counter()
    for sample, origin in zip(ds.train, got):
        trained[origin[0]] += sum(1 for t in sample["labels"] if t != -100)
    assert (a["trained_tokens"], b["trained_tokens"], c["trained_tokens"]) == (trained["A"], trained["B"], trained["C"])
    assert abs(sum(m["share_trained_tokens"] for m in ds.stats["datasets"]) - 1) < 1e-3


def test_weights_give_exact_shares_counted_row_by_row(tmp_path, tokenizer_dir, tok):
    write_members(tmp_path)
    path = recipe(tmp_path, tokenizer_dir, fmt='mix = "weighted"\nmix_rows = 60', a="weight = 3", b="weight = 1.5",
                  c="weight = 1.5")
    ds = build_dataset(load_recipe(path), tok)
    assert members_of(ds.train) == {"A": 30, "B": 15, "C": 15}  # 3 : 1.5 : 1.5 of 60
    got = origins(ds.train)
    assert len(set(o for o in got if o[0] == "A")) == 30  # A has 40 rows: 30 different ones, none twice
    b_rows = Counter(o for o in got if o[0] == "B")
    assert set(b_rows) == {f"B{i}" for i in range(12)} and sorted(b_rows.values()) == [1] * 9 + [2] * 3  # 12 rows for 15
    assert got != sorted(got, key=lambda o: o[0])  # the members are shuffled together
    assert [m["mixed"] for m in ds.stats["datasets"]] == [30, 15, 15]
    # the recipe's seed picks the rows: the same seed the same mixture, another seed another one
    again = build_dataset(load_recipe(path), tok)
    assert origins(again.train) == got
    other = build_dataset(load_recipe(recipe(tmp_path, tokenizer_dir, fmt='mix = "weighted"\nmix_rows = 60',
                                             a="weight = 3", b="weight = 1.5", c="weight = 1.5", seed=6)), tok)
    assert members_of(other.train) == {"A": 30, "B": 15, "C": 15} and origins(other.train) != got


def test_weights_default_to_the_rows_the_members_have_and_rows_fix_a_count(tmp_path, tokenizer_dir, tok):
    write_members(tmp_path)
    ds = build_dataset(load_recipe(recipe(tmp_path, tokenizer_dir, fmt='mix = "weighted"', a="weight = 2",
                                          c="rows = 5")), tok)
    # C gives exactly 5; A and B (weights 2 and 1 by default) share their own 40 + 12 = 52 rows 2 : 1
    assert members_of(ds.train) == {"A": 35, "B": 17, "C": 5}
    assert quotas(52, [2.0, 1.0]) == [35, 17] and quotas(10, [1, 1, 1]) == [4, 3, 3]


def test_interleave_takes_one_row_of_each_in_turn_until_one_runs_out(tmp_path, tokenizer_dir, tok):
    write_members(tmp_path, sizes=(9, 4, 6))
    ds = build_dataset(load_recipe(recipe(tmp_path, tokenizer_dir, fmt='mix = "interleave"')), tok)
    assert origins(ds.train) == [f"{m}{i}" for i in range(4) for m in "ABC"]
    # rows = N with interleave: B repeated to 6 rows, then C (6) and B run out together
    ds = build_dataset(load_recipe(recipe(tmp_path, tokenizer_dir, fmt='mix = "interleave"', b="rows = 6")), tok)
    assert len(ds.train) == 18 and members_of(ds.train) == {"A": 6, "B": 6, "C": 6}


def test_weighted_interleave_draws_members_by_weight_until_the_drawn_one_runs_out(tmp_path, tokenizer_dir, tok):
    write_members(tmp_path)
    path = recipe(tmp_path, tokenizer_dir, fmt='mix = "interleave"', a="weight = 6", b="weight = 1", c="weight = 1")
    ds = build_dataset(load_recipe(path), tok)
    got = origins(ds.train)
    counts = members_of(ds.train)
    sizes = {"A": 40, "B": 12, "C": 20}
    assert any(counts[m] == sizes[m] for m in sizes)  # it stopped when a member it drew had run out
    for m in sizes:  # each member's rows come in their order, from its first
        assert [o for o in got if o[0] == m] == [f"{m}{i}" for i in range(counts[m])]
    assert counts["A"] > counts["B"] + counts["C"]  # weight 6 against 1 and 1
    assert origins(build_dataset(load_recipe(path), tok).train) == got  # seeded


def test_validation_from_one_member_and_format_ops_on_the_whole_mixture(tmp_path, tokenizer_dir, tok):
    write_members(tmp_path)
    fmt = '\n[[format.ops]]\nop = "system_prompt"\ncontent = "Be brief."\n\n[[format.ops]]\nop = "limit"\nn = 50\n'
    path = recipe(tmp_path, tokenizer_dir, c='validation_split = "validation"')
    text = path.read_text().replace('cache = false\n', 'cache = false\n' + fmt, 1)
    path.write_text(text)
    ds = build_dataset(load_recipe(path), tok)
    assert origins(ds.validation) == ["CV0", "CV1", "CV2"]
    assert len(ds.train) == 50 and ds.stats["dropped_limit"] == 22  # limit acts on the 72 mixed rows
    assert all(s["text"].startswith("<|im_start|>system\nBe brief.<|im_end|>") for s in [*ds.train, *ds.validation])
    assert [m["validation"] for m in ds.stats["datasets"]] == [0, 0, 3]


def test_the_cache_key_covers_every_member(tmp_path, tokenizer_dir, tok):
    files = write_members(tmp_path)
    path = recipe(tmp_path, tokenizer_dir, fmt='mix = "weighted"', a="weight = 2")
    path.write_text(path.read_text().replace("cache = false", "cache = true"))
    first = build_dataset(load_recipe(path), tok)
    hit = build_dataset(load_recipe(path), tok)
    assert (first.stats["cache"], hit.stats["cache"]) == ("miss", "hit")
    assert hit.stats["datasets"] == first.stats["datasets"] and origins(hit.train) == origins(first.train)
    # a member's weight, a member's standardizer option, a member's file: each rebuilds
    for change in (lambda t: t.replace("weight = 2", "weight = 3"),
                   lambda t: t.replace('output = "answer"', 'output = "answer", system = "persona"')):
        path.write_text(change(path.read_text()))
        assert build_dataset(load_recipe(path), tok).stats["cache"] == "miss"
    with files["b"].open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"question": "Task new", "answer": "[B99] done"}) + "\n")
    again = build_dataset(load_recipe(path), tok)
    assert again.stats["cache"] == "miss" and again.stats["datasets"][1]["read"] == 13


def test_mixture_recipe_errors_name_the_member_and_line(tmp_path, tokenizer_dir, recipe_problems):
    write_members(tmp_path)
    text = recipe(tmp_path, tokenizer_dir, a="weight = 2", b='standardizer = "alpacca"').read_text()
    text = text.replace('standardizer = { use = "alpaca", instruction = "question", output = "answer" }\n', "")
    problems = recipe_problems(text)
    assert any(re.search(r"recipe.toml:\d+:\d+: format: .*weights need mix = \"weighted\"", p) for p in problems), problems
    assert any(re.search(r"recipe.toml:2\d:1: format.datasets\[1\].standardizer.use: unknown dataset format 'alpacca'", p)
               for p in problems), problems
    both = recipe(tmp_path, tokenizer_dir, fmt='dataset = "a.jsonl"\nsplit = "train"').read_text()
    problems = recipe_problems(both)
    assert any("set dataset (one dataset) or [[format.datasets]] (a mixture), not both" in p for p in problems), problems
    with pytest.raises(RecipeError, match="two datasets are named a"):
        load_recipe(recipe(tmp_path, tokenizer_dir, extra_members='[[format.datasets]]\ndataset = "a.jsonl"\n'))
    with pytest.raises(RecipeError, match="set weight or rows, not both"):
        load_recipe(recipe(tmp_path, tokenizer_dir, fmt='mix = "weighted"', a="weight = 2\nrows = 3"))


def test_recipe_data_shows_each_datasets_share(tmp_path, tokenizer_dir):
    write_members(tmp_path)
    path = recipe(tmp_path, tokenizer_dir, fmt='mix = "weighted"\nmix_rows = 30', a="weight = 4", b="weight = 1",
                  c="weight = 1")
    result = run_cli("data", str(path), "--samples", "0", "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "datasets (mix weighted):" in result.stdout
    assert re.search(r"a: 20 samples \(66\.7%\), \d+ trained tokens \(\d+\.\d%\); read 40, 40 after its ops, 20 in the "
                     r"mixture \(weight 4\)", result.stdout), result.stdout


@pytest.mark.slow
def test_a_run_trains_on_a_mixture_and_reports_each_datasets_share(tmp_path, tiny_model_dir):
    """A real run of the tiny model (2 optimizer steps on a CPU): the log and report.md show each dataset's share."""
    from recipetune.plugins import get_plugin_manager
    from recipetune.runner import execute, prepare_run
    from recipetune.testing import tiny_recipe_text

    write_members(tmp_path)
    members = MEMBERS.format(a="weight = 2", b="weight = 1", c='weight = 1\nvalidation_split = "validation"')
    text = tiny_recipe_text(tiny_model_dir, tmp_path / "a.jsonl").replace(f'dataset = "{tmp_path / "a.jsonl"}"\n', "")
    text = text.replace('chat_template = "tokenizer"\n', 'chat_template = "tokenizer"\nmix = "weighted"\nmix_rows = 16\n'
                        + members).replace("max_steps = 3", "max_steps = 2")
    pm = get_plugin_manager()
    from recipetune import load_recipe_text

    run = execute(prepare_run(load_recipe_text(text, recipe_dir=tmp_path, pm=pm), pm, tmp_path / "run"))
    stats = run.state["format_stats"]
    assert [m["samples"] for m in stats["datasets"]] == [8, 4, 4] and stats["validation"] == 3
    report = (run.output_dir / "report.md").read_text()
    assert "| data | 3 datasets mixed by weighted (template tokenizer) |" in report
    assert "| dataset | read | after its ops | in the mixture | samples | share | trained tokens | share |" in report
    assert re.search(r"\| a \| 40 \| 40 \| 8 \| 8 \| 50\.0% \| \d+ \| \d+\.\d% \|", report), report
    log = (run.output_dir / "run.log").read_text()
    assert "format: dataset b: 4 samples (25.0%)" in log


def test_trained_counts_per_sample():
    """The per-dataset trained tokens come from SampleTable.trained_counts (one pass, empty samples are 0)."""
    import numpy as np

    from recipetune.data.samples import SampleTable

    labels = np.array([-100, 1, 2, -100, -100, 5, 6, 7, -100, 9], np.int32)
    ids = np.arange(10, dtype=np.int32)
    assert SampleTable(ids, labels, np.array([0, 3, 7, 10]), ["a", "b", "c"]).trained_counts().tolist() == [2, 2, 2]
    assert SampleTable(ids, labels, np.array([0, 3, 3, 7, 10]), list("abcd")).trained_counts().tolist() == [2, 0, 2, 2]


def test_a_weighted_mixture_encoded_in_read_order_gives_the_same_samples_in_the_same_order(tmp_path, tokenizer_dir,
                                                                                          monkeypatch):
    """The format stage encodes a weighted mixture in the order its rows were read and mixes the samples afterwards
    (the encoding workers then read the rows front to back): the samples, their ids, labels, members and order are
    those of encoding the mixture in its mixed order, with samples dropped as too long and a validation split."""
    from transformers import AutoTokenizer

    from recipetune.data import pipeline
    from recipetune.data.mixture import read_order

    write_members(tmp_path)
    with (tmp_path / "a.jsonl").open("a", encoding="utf-8") as fh:  # long rows, dropped by too_long = "drop"
        for i in range(40, 46):
            fh.write(json.dumps({"conversations": [{"from": "human", "value": "word " * 200},
                                                   {"from": "gpt", "value": f"[A{i}] long"}]}) + "\n")
    path = recipe(tmp_path, tokenizer_dir, fmt='mix = "weighted"\nmix_rows = 80\ntoo_long = "drop"\nmax_seq_length = 64',
                  a="weight = 3", b="weight = 1", c='weight = 1\nvalidation_split = "validation"')
    seen = []
    monkeypatch.setattr(pipeline, "read_order", lambda parts, members: seen.append(read_order(parts, members)) or seen[-1])
    new = build_dataset(load_recipe(path), AutoTokenizer.from_pretrained(tokenizer_dir))
    assert seen[0] is not None and seen[0] != sorted(seen[0])  # the rows were encoded in another order than mixed
    monkeypatch.setattr(pipeline, "read_order", lambda parts, members: None)  # encode in the mixed order
    old = build_dataset(load_recipe(path), AutoTokenizer.from_pretrained(tokenizer_dir))
    assert new.stats["dropped_too_long"] > 0 and len(new.validation) == 3
    for name in ("train", "validation"):
        a, b = getattr(new, name), getattr(old, name)
        assert len(a) == len(b) and a.texts == b.texts
        for field in ("ids", "labels", "offsets", "sources"):
            assert (getattr(a, field) == getattr(b, field)).all(), (name, field)
    assert origins(new.train) != sorted(origins(new.train))  # still shuffled together
    keys = ("samples", "validation", "tokens", "trained_tokens", "dropped_too_long", "datasets")
    assert {k: new.stats[k] for k in keys} == {k: old.stats[k] for k in keys}
