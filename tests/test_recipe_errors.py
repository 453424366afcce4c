"""Broken recipes of every kind: each problem named with file, line, column, field and what was expected."""

from __future__ import annotations

import json
import re

def installed(kind: str) -> str:
    """The installed components of ``kind`` as a recipe problem lists them."""
    from recipetune.plugins import get_plugin_manager

    return ", ".join(get_plugin_manager().registry.names(kind))


GOOD = """\
name = "demo"

[load]
use = "hf"
model = "org/model"

[adapt]
use = "lora"
r = 8

[format]
dataset = "org/data"

[train]
use = "sft"
max_steps = 10

[[export]]
use = "lora"
"""


def test_valid_recipe_has_no_problems(recipe_problems):
    assert recipe_problems(GOOD) == []


def test_misspelled_key_points_at_its_line_with_a_suggestion(recipe_problems):
    text = GOOD.replace("max_steps = 10", "max_steps = 10\nlearnig_rate = 1e-4")
    [problem] = recipe_problems(text)
    assert re.fullmatch(r'.*recipe\.toml:17:1: train\.learnig_rate: unknown key for trainer "sft"; did you mean "learning_rate"\?', problem)


def test_unknown_component_lists_installed_names(recipe_problems):
    text = GOOD.replace('[[export]]\nuse = "lora"', '[[export]]\nuse = "ggfu"')
    [problem] = recipe_problems(text)
    assert ":19:1: export[0].use: unknown exporter 'ggfu'; did you mean 'gguf'? installed: " in problem
    assert "installed: " in problem and "lora" in problem and "merged" in problem


def test_unknown_component_without_a_close_name_lists_installed_names(recipe_problems):
    text = GOOD.replace('[[export]]\nuse = "lora"', '[[export]]\nuse = "onnx"')
    [problem] = recipe_problems(text)
    exporters = installed("exporter")  # every installed one, in order (plugins add exporters)
    assert {"gguf", "lora", "merged"} <= set(exporters.split(", "))
    assert problem.endswith(f":19:1: export[0].use: unknown exporter 'onnx'; installed: {exporters}")


def test_every_problem_is_reported_at_once(recipe_problems):
    text = (GOOD.replace("r = 8", "r = 0\nrank = 8")
            .replace("max_steps = 10", 'max_steps = "ten"')
            .replace('use = "hf"', 'use = "hff"'))
    problems = recipe_problems(text)
    assert len(problems) == 4, problems
    joined = "\n".join(problems)
    assert ":4:1: load.use: unknown backend 'hff'; did you mean 'hf'?" in joined
    assert ":9:1: adapt.r: Input should be greater than or equal to 1 (got 0)" in joined
    assert ":10:1: adapt.rank: unknown key for adapter \"lora\"" in joined
    assert ":17:1: train.max_steps: Input should be a valid integer" in joined


def test_toml_syntax_error_has_its_line(recipe_problems):
    [problem] = recipe_problems(GOOD.replace("r = 8", "r = = 8"))
    assert re.search(r"recipe\.toml:9:\d+: TOML syntax error: ", problem), problem


def test_missing_tables_and_required_keys(recipe_problems):
    problems = recipe_problems('name = "x"\n\n[load]\nuse = "hf"\n')
    joined = "\n".join(problems)
    assert ":3:1: load: missing required key for backend \"hf\"" in joined or "load.model: missing required key" in joined
    assert "train: nothing to do: add [train] and [format] to fine-tune, or [[export]]" in joined
    trains_without_data = recipe_problems('name = "x"\n\n[load]\nuse = "hf"\nmodel = "m"\n\n[train]\nuse = "sft"\n')
    assert any("format: missing [format] table: [train] needs data" in p for p in trains_without_data)


def test_missing_use_lists_choices(recipe_problems):
    [problem] = recipe_problems(GOOD.replace('use = "sft"\n', ""))
    assert ":14:1: train.use: missing 'use': name a trainer; installed: " in problem and "sft" in problem


def test_array_of_tables_written_as_a_table(recipe_problems):
    [problem] = recipe_problems(GOOD.replace("[[export]]", "[export]"))
    assert "export: write [[export]] (an array of tables), not [export]" in problem


def test_format_subcomponent_errors_are_located(recipe_problems):
    text = GOOD.replace('dataset = "org/data"', 'dataset = "org/data"\nstandardizer = "sharegtp"\nchat_tempalte = "tokenizer"')
    problems = "\n".join(recipe_problems(text))
    assert ":13:1: format.standardizer.use: unknown dataset format 'sharegtp'; did you mean 'sharegpt'?" in problems
    assert ':14:1: format.chat_tempalte: unknown key for [format]; did you mean "chat_template"?' in problems


def test_top_level_errors(recipe_problems):
    problems = "\n".join(recipe_problems(GOOD.replace('name = "demo"', 'name = "demo run"\nsede = 1')))
    assert ":1:1: name: String should match pattern" in problems
    assert ':2:1: sede: unknown key for a recipe (top level); did you mean "seed"?' in problems


def test_override_errors_name_the_command_line(recipe_problems):
    problems = recipe_problems(GOOD, overrides=("train.max_steps=abc", "adapt.rank=4", "nonsense"))
    joined = "\n".join(problems)
    assert "<command line>: nonsense: expected KEY=VALUE" in joined


def test_override_type_errors(recipe_problems):
    problems = recipe_problems(GOOD, overrides=("train.max_steps=abc", "adapt.alpah=4"))
    assert "<command line>: train.max_steps=abc: Input should be a valid integer" in problems[0] or any(
        "<command line>: train.max_steps=abc" in p for p in problems)
    assert any('<command line>: adapt.alpah=4: unknown key for adapter "lora"; did you mean "alpha"?' in p for p in problems), problems


def test_cli_exit_status_and_no_traceback(cli, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace("max_steps = 10", "max_stepz = 10"))
    for command in ("validate", "run"):
        result = cli(command, str(path))
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert f"{path}:16:1: train.max_stepz: unknown key for trainer \"sft\"; did you mean \"max_steps\"?" in result.stderr


def test_missing_recipe_file(cli, tmp_path):
    result = cli("validate", str(tmp_path / "nope.toml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "nope.toml: cannot read the recipe" in result.stderr


def test_a_token_in_a_recipe_is_refused_and_never_echoed(recipe_problems):
    token = "hf_" + "a1B2c3D4e5" * 4
    problems = recipe_problems(GOOD.replace('model = "org/model"', f'model = "org/model"\ntoken = "{token}"'))
    joined = "\n".join(problems)
    assert ":6:1: load.token: looks like a secret" in joined and "HF_TOKEN" in joined
    assert token not in joined
    problems = recipe_problems(GOOD, overrides=(f"load.model={token}",))
    assert any("<command line>: load.model=***: looks like a secret" in p for p in problems)
    assert token not in "\n".join(problems)


def test_a_stage_key_written_under_another_table_gets_a_hint(recipe_problems):
    [problem] = recipe_problems(GOOD.replace("max_steps = 10", 'max_steps = 10\nreport = ["memory"]'))
    assert ':17:1: train.report: unknown key for trainer "sft"; a key written after a [table] header belongs to that table' in problem


def test_problems_are_sorted_by_line_and_overrides_come_last(recipe_problems):
    text = GOOD.replace("max_steps = 10", "max_stepz = 10").replace('model = "org/model"', 'model = "org/model"\nbogus = 1')
    problems = recipe_problems(text, overrides=("unknown.key=1",))
    assert [p.split(":")[1] for p in problems[:2]] == ["6", "17"]
    assert problems[2].startswith("<command line>: unknown.key=1: unknown key for a recipe (top level)")


def test_a_file_that_is_not_text(cli, tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00name")
    result = cli("validate", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "binary.toml: the recipe is not UTF-8 text" in result.stderr


def test_override_problems_and_file_problems_are_reported_together(recipe_problems):
    problems = recipe_problems(GOOD.replace("max_steps = 10", "max_stepz = 10"), overrides=("train.max_steps", "export[4].use=x"))
    assert len(problems) == 3, problems
    assert ':16:1: train.max_stepz: unknown key for trainer "sft"' in problems[0]
    assert problems[1] == "<command line>: train.max_steps: expected KEY=VALUE, such as train.max_steps=10"
    assert problems[2] == "<command line>: export[4].use=x: the recipe has no entry export[4]"


def test_a_secret_in_an_override_is_masked_in_every_problem(recipe_problems):
    token = "hf_" + "Z9y8X7w6V5" * 4
    problems = recipe_problems(GOOD, overrides=(f"load.token={token}", f"train.seed={token}"))
    assert token not in "\n".join(problems)
    assert any(p.startswith('<command line>: load.token=***: unknown key for backend "hf"') for p in problems), problems
    assert any(p.startswith("<command line>: train.seed=***: Input should be a valid integer") for p in problems), problems
    problems = recipe_problems(GOOD.replace("max_steps = 10", f'max_steps = "{token}"'))
    assert token not in "\n".join(problems) and "looks like a secret" in problems[0]


def test_stage_arrays_of_the_wrong_type_are_one_clear_problem(recipe_problems):
    text = GOOD.replace('[[export]]\nuse = "lora"\n', "")
    for value, got in (("5", "int 5"), ('"gguf"', "str 'gguf'"), ("true", "bool True")):
        [problem] = recipe_problems(text.replace('name = "demo"', f'name = "demo"\nexport = {value}'))
        assert f':2:1: export: expected [[export]] tables (an array of tables with use = "..."), got {got}' in problem


def test_a_value_that_fits_no_member_of_a_union_is_one_problem(recipe_problems):
    [problem] = recipe_problems(GOOD.replace("r = 8", 'r = 8\ntarget_modules = "q_proj"'))
    assert problem.endswith(":10:1: adapt.target_modules: expected a valid list or 'all-linear' (got 'q_proj')")


def test_an_unquoted_list_override_is_a_list_of_strings(recipe_problems, tmp_path):
    from recipetune import load_recipe

    (tmp_path / "r.toml").write_text(GOOD)
    recipe = load_recipe(tmp_path / "r.toml", ["adapt.target_modules=[q_proj,v_proj]"])  # the shell ate the quotes
    assert recipe.adapt.options.target_modules == ["q_proj", "v_proj"]


def test_a_misspelled_use_is_pointed_at(recipe_problems):
    [problem] = recipe_problems(GOOD.replace('use = "sft"', 'usee = "sft"'))
    trainers = installed("trainer")
    assert "sft" in trainers.split(", ")
    assert problem.endswith(f':15:1: train.usee: unknown key; did you mean "use"? name a trainer; installed: {trainers}')


def test_missing_local_inputs_are_found_before_anything_loads(recipe_problems, tmp_path):
    text = (GOOD.replace('model = "org/model"', 'model = "./weights"').replace('dataset = "org/data"', 'dataset = "chat.jsonl"')
            .replace('[[export]]', '[[report]]\nuse = "samples"\nprompts_file = "held.jsonl"\n\n[[export]]'))
    problems = recipe_problems(text)
    assert len(problems) == 3, problems
    assert f":5:1: load.model: no such file or folder: {tmp_path / 'weights'} (relative to the recipe's folder" in problems[0]
    assert f":12:1: format.dataset: no such file or folder: {tmp_path / 'chat.jsonl'}" in problems[1]
    assert f":20:1: report[0].prompts_file: no such file: {tmp_path / 'held.jsonl'}" in problems[2]
    [problem] = recipe_problems(GOOD, overrides=("load.model=pkg:no_such_package_xyz/model.gguf",))
    assert problem.startswith("<command line>: load.model=pkg:no_such_package_xyz/model.gguf: package "
                              "'no_such_package_xyz' is not installed; it should hold model.gguf")
    (tmp_path / "weights").mkdir(), (tmp_path / "chat.jsonl").write_text(""), (tmp_path / "held.jsonl").write_text("")
    assert recipe_problems(text) == []


def test_combinations_that_would_fail_late_are_found_by_validate(recipe_problems):
    no_adapt = GOOD.replace('[adapt]\nuse = "lora"\nr = 8\n', "")
    [problem] = recipe_problems(no_adapt)
    assert ":16:1: export[0].use: the lora exporter writes an adapter, and this recipe has no [adapt] table" in problem
    [problem] = recipe_problems(GOOD.replace("max_steps = 10", "max_steps = 0"))
    assert ":16:1: train.max_steps: max_steps = 0 trains nothing" in problem
    [problem] = recipe_problems(GOOD.replace("max_steps = 10", "max_steps = 10\neval_steps = 5"))
    assert ":17:1: train.eval_steps: eval_steps needs a validation set" in problem
    assert recipe_problems(GOOD.replace("max_steps = 10", "max_steps = 10\neval_steps = 5")
                           .replace('dataset = "org/data"', 'dataset = "org/data"\nvalidation_fraction = 0.1')) == []
    problems = recipe_problems(GOOD.replace("max_steps = 10", 'max_steps = 10\noptim = "adamw_8bti"\nlr_scheduler_type = "cosinus"'))
    assert any(":17:1: train.optim: unknown optimizer 'adamw_8bti'; did you mean 'adamw_8bit'" in p for p in problems), problems
    assert any(":18:1: train.lr_scheduler_type: unknown learning-rate schedule 'cosinus'; did you mean 'cosine'" in p
               for p in problems), problems
    [warning] = recipe_problems(GOOD.replace("max_steps = 10", 'max_steps = 10\noptim = "muon"'))
    assert ":17:1: warning: train.optim: optimizer 'muon' is not one transformers" in warning


def test_the_optimizer_and_schedule_names_are_those_of_transformers():
    import pytest

    transformers = pytest.importorskip("transformers")
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    from recipetune_plugins.sft import KNOWN_VERSION, OPTIMIZERS, SCHEDULERS

    if not transformers.__version__.startswith(KNOWN_VERSION + "."):
        pytest.skip(f"the lists were taken from transformers {KNOWN_VERSION}")
    assert set(OPTIMIZERS) == {o.value for o in OptimizerNames}
    assert set(SCHEDULERS) == {s.value for s in SchedulerType}


def test_a_misspelled_stage_table_gets_a_suggestion(recipe_problems):
    problems = recipe_problems(GOOD.replace("[train]", "[trian]"))
    assert any(':14:1: trian: unknown key for a recipe (top level); did you mean "train"?' in p for p in problems), problems


def test_validate_json_prints_the_problems_of_a_broken_recipe(cli, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace("max_steps = 10", "max_stepz = 10"))
    result = cli("validate", str(path), "--json")
    assert result.returncode == 2
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert [(p["path"], p["line"], p["column"]) for p in data["problems"]] == [("train.max_stepz", 16, 1)]


def test_a_string_without_quotes_gets_a_hint(recipe_problems):
    [problem] = recipe_problems(GOOD.replace('use = "hf"', "use = hf"))
    assert problem.endswith(':4:7: TOML syntax error: Invalid value; a string needs quotes: use = "hf"')
    [problem] = recipe_problems(GOOD.replace("r = 8", "r = 8\nuse_rslora = True"))
    assert problem.endswith(":10:14: TOML syntax error: Invalid value; TOML booleans are lowercase: use_rslora = true")


def test_values_keep_their_toml_types(recipe_problems):
    problems = recipe_problems(GOOD.replace("max_steps = 10", 'max_steps = "10"\nlearning_rate = 1\npacking = "false"')
                               .replace("r = 8", "r = 8e0"))
    joined = "\n".join(problems)
    assert len(problems) == 3, problems
    assert ":16:1: train.max_steps: Input should be a valid integer (got '10')" in joined
    assert ":18:1: train.packing: expected a valid boolean or 'auto' (got 'false')" in joined
    assert ":9:1: adapt.r: Input should be a valid integer (got 8.0)" in joined  # learning_rate = 1 is a float
