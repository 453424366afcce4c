"""The key -> line index agrees with tomllib on every shipped recipe and on tricky TOML."""

from __future__ import annotations

import tomllib

import pytest
from conftest import RECIPES

from recipetune.recipe.positions import dotted, index_positions, locate


def leaf_paths(data, prefix=()):
    if isinstance(data, dict):
        for key, value in data.items():
            yield prefix + (key,)
            yield from leaf_paths(value, prefix + (key,))
    elif isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        for i, value in enumerate(data):
            yield from leaf_paths(value, prefix + (i,))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_key_of_shipped_recipes_is_located(recipe):
    text = recipe.read_text()
    positions = index_positions(text)
    lines = text.splitlines()
    for path in leaf_paths(tomllib.loads(text)):
        assert path in positions, f"{dotted(path)} not indexed"
        line, col = positions[path]
        last = path[-1]
        assert str(last) in lines[line - 1], (dotted(path), line, lines[line - 1])


def test_multiline_values_dotted_keys_and_arrays_of_tables():
    text = '''\
name = "x"  # comment with = sign
[load]
model.name = "a"
"quoted key" = 1
targets = [
  "q_proj",  # [not a table]
  "v_proj",
]
prompt = """
[fake]
key = 1
"""
after = 2

[[export]]
use = "lora"

[[export]]
use = "gguf"
opts = { a = 1, b = [1,
  2] }
last = true
'''
    positions = index_positions(text)
    assert positions[("load", "model", "name")] == (3, 1)
    assert positions[("load", "quoted key")] == (4, 1)
    assert positions[("load", "after")] == (13, 1)
    assert ("fake",) not in positions and ("load", "key") not in positions
    assert positions[("export", 0, "use")] == (16, 1)
    assert positions[("export", 1, "use")] == (19, 1)
    assert positions[("export", 1, "last")] == (22, 1)
    assert locate(positions, ("export", 1, "missing")) == (18, 1)
    assert dotted(("export", 1, "use")) == "export[1].use"


def test_inline_tables_and_arrays_of_tables_nested_under_array_entries():
    text = '''\
[format]
standardizer = { use = "alpaca", output = "reply \\\\" }
datasets = [
  { path = "a.jsonl", weight = 2 },  # { not = "a key" }
  { path = "b.jsonl", ops = [{ op = "x" }] },
]

[[format.mix]]
name = "one"

[[format.mix.ops]]
op = "first"

[[format.mix]]
name = "two"

[[format.mix.ops]]
op = "second"
'''
    positions = index_positions(text)
    assert tomllib.loads(text)["format"]["mix"][1]["ops"][0]["op"] == "second"
    assert positions[("format", "standardizer", "use")] == (2, 18)
    assert positions[("format", "standardizer", "output")] == (2, 34)
    assert positions[("format", "datasets", 0, "weight")] == (4, 23)
    assert positions[("format", "datasets", 1, "path")] == (5, 5)
    assert positions[("format", "datasets", 1, "ops", 0, "op")] == (5, 32)
    assert ("format", "datasets", 0, "not") not in positions
    assert positions[("format", "mix", 0, "ops", 0, "op")] == (12, 1)
    assert positions[("format", "mix", 1, "ops", 0, "op")] == (18, 1)
