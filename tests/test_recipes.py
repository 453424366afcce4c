"""Every shipped recipe validates against the installed plugins."""

from __future__ import annotations

import pytest
from conftest import RECIPES, ROOT

from recipetune import load_recipe


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_validates(recipe):
    loaded = load_recipe(recipe)
    assert loaded.name


def test_quickstart_data_is_what_the_generator_writes(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_data", ROOT / "recipes" / "data" / "make_quickstart_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    train, heldout = module.build()
    module.write_jsonl(tmp_path / "t.jsonl", train)
    module.write_jsonl(tmp_path / "h.jsonl", heldout)
    assert (tmp_path / "t.jsonl").read_text() == (ROOT / "recipes/data/quickstart_chat.jsonl").read_text()
    assert (tmp_path / "h.jsonl").read_text() == (ROOT / "recipes/data/quickstart_heldout.jsonl").read_text()
    trained_questions = {c["conversations"][0]["value"] for c in train}
    assert not trained_questions & {h["prompt"] for h in heldout}, "held-out prompts must not be trained on"


def test_mixture_data_is_what_the_generator_writes(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_mixture", ROOT / "recipes" / "data" / "make_mixture_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.jsonl_text(module.tool_conversations()) == (ROOT / "recipes/data/tools_chat.jsonl").read_text()
    assert module.csv_text(module.facts_rows()) == (ROOT / "recipes/data/facts_qa.csv").read_text()
