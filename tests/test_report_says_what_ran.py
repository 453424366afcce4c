"""report.md and the log say what ran (issue 15, item 3)."""

from __future__ import annotations

import logging

from recipetune.cli import LogFormat
from recipetune.recipe import load_recipe
from recipetune.report import write_report
from recipetune.run import Run


def test_an_overridden_model_is_the_one_the_report_names(tmp_path, recipetune_pm, tiny_model_dir):
    recipe_file = tmp_path / "r.toml"
    recipe_file.write_text('name = "r"\ndescription = "Llama-3.2-3B-Instruct, 4-bit QLoRA."\n'
                           '[load]\nuse = "hf"\nmodel = "unsloth/Llama-3.2-3B-Instruct"\n'
                           '[[export]]\nuse = "merged"\n')
    recipe = load_recipe(recipe_file, [f"load.model={tiny_model_dir}"], pm=recipetune_pm)
    run = Run(recipe=recipe, pm=recipetune_pm, output_dir=tmp_path / "run")
    run.state["trainable_parameters"] = (1_000, 200_000)
    report = write_report(run, None).read_text()
    assert f"| model | `{tiny_model_dir}` via `hf` (overridden; the recipe names `unsloth/Llama-3.2-3B-Instruct`) |" in report
    assert f"Command-line overrides: `load.model={tiny_model_dir}` (the description above is the recipe's" in report
    assert "| parameters | 1,000 trainable parameters of 200,000 (0.50%) |" in report


def test_a_warning_names_its_level_once():
    record = logging.LogRecord("recipetune", logging.WARNING, __file__, 1, "WARNING: the stop token %r is not trained",
                               ("<|im_end|>",), None)
    assert LogFormat().format(record) == "WARNING the stop token '<|im_end|>' is not trained"
    info = logging.LogRecord("recipetune", logging.INFO, __file__, 1, "stage load: started", (), None)
    assert LogFormat().format(info) == "INFO stage load: started"


def test_the_plan_says_why_a_model_size_is_unknown(tmp_path):
    from recipetune_plugins.hf_backend import size_unknown_because

    assert "a Hub id" in size_unknown_because("org/model")
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    assert size_unknown_because(str(folder)) == f"model size unknown: no readable config.json in the local folder {folder}"
    assert "not a local folder" not in size_unknown_because(str(folder))
