"""Typed command-line overrides."""

from __future__ import annotations

from recipetune import load_recipe_text
from recipetune.recipe.overrides import parse_path, parse_value
from recipetune.testing import tiny_recipe_text


def test_values_are_typed_like_toml():
    assert parse_value("10") == 10
    assert parse_value("2e-4") == 2e-4
    assert parse_value("false") is False
    assert parse_value('["q_proj","v_proj"]') == ["q_proj", "v_proj"]
    assert parse_value("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert parse_value('"quoted"') == "quoted"


def test_paths():
    assert parse_path("train.max_steps") == ("train", "max_steps")
    assert parse_path("export[1].quantization") == ("export", 1, "quantization")
    assert parse_path("export.0.use") == ("export", 0, "use")
    assert parse_path("bad..path") is None


def test_overrides_reach_the_validated_recipe(tmp_path):
    (tmp_path / "d.jsonl").write_text("")
    text = tiny_recipe_text(tmp_path, tmp_path / "d.jsonl", extra='[[export]]\nuse = "lora"')
    recipe = load_recipe_text(text, recipe_dir=tmp_path, overrides=[
        "train.max_steps=10", 'adapt.target_modules=["q_proj","v_proj","o_proj"]', "load.load_in_4bit=true",
        "export[0].use=merged", "format.limit=5"])
    assert recipe.train.options.max_steps == 10
    assert recipe.adapt.options.target_modules == ["q_proj", "v_proj", "o_proj"]
    assert recipe.load.options.load_in_4bit is True
    assert recipe.export[0].use == "merged"
    assert recipe.format.limit == 5


def test_relative_paths_resolve_against_the_recipe_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "chat.jsonl").write_text("")
    (tmp_path / "model").mkdir()
    text = tiny_recipe_text(tmp_path, "data/chat.jsonl").replace(f'model = "{tmp_path}"', 'model = "./model"')
    recipe = load_recipe_text(text, recipe_dir=tmp_path)
    assert recipe.format.dataset == str(tmp_path / "data" / "chat.jsonl")
    assert recipe.load.options.model == str(tmp_path / "model")
    hub = load_recipe_text(text.replace('"./model"', '"HuggingFaceTB/SmolLM2-135M"'), recipe_dir=tmp_path)
    assert hub.load.options.model == "HuggingFaceTB/SmolLM2-135M"
