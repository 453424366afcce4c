"""Every problem of a recipe in one pass, and the traps a first run falls into named before it runs (issue 15,
items 5 and 14)."""

from __future__ import annotations

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
warmup_steps = 2

[[export]]
use = "lora"
"""


def test_checks_across_sections_run_beside_other_errors(recipe_problems):
    # eval_steps without a validation set is a check across [train] and [format]: it used to appear only once
    # the misspelled key and the bad value were fixed
    text = GOOD.replace("max_steps = 10", "max_steps = 10\neval_steps = 5\nlearnig_rate = 1e-4").replace("r = 8", "r = 0")
    problems = recipe_problems(text)
    joined = "\n".join(problems)
    assert "adapt.r: Input should be greater than or equal to 1" in joined
    assert 'train.learnig_rate: unknown key for trainer "sft"' in joined
    assert "train.eval_steps: eval_steps needs a validation set" in joined
    assert len(problems) == 3, problems


def test_a_check_about_a_wrong_key_is_not_reported_twice(recipe_problems):
    # the lora exporter needs [adapt]; [adapt] is there but wrong: its own error is the one to show
    text = GOOD.replace("r = 8", "r = 0").replace('max_steps = 10', 'max_steps = 10\noptim = "adamw_8bt"')
    problems = recipe_problems(text)
    joined = "\n".join(problems)
    assert "adapt.r:" in joined and "train.optim: unknown optimizer 'adamw_8bt'; did you mean 'adamw_8bit'" in joined
    assert "no [adapt]" not in joined
    assert len(problems) == 2, problems


def test_an_unknown_component_still_waits_for_its_fix(recipe_problems):
    # with [adapt] unknown, "the lora exporter needs [adapt]" would be wrong: checks across sections wait
    text = GOOD.replace('use = "lora"\nr = 8', 'use = "loar"\nr = 8')
    [problem] = recipe_problems(text)
    assert "adapt.use: unknown adapter 'loar'; did you mean 'lora'?" in problem


def test_warmup_as_long_as_the_run_warns(recipe_problems):
    [problem] = recipe_problems(GOOD.replace("warmup_steps = 2", "warmup_steps = 5"), overrides=("train.max_steps=3",))
    assert "warning: train.warmup_steps: warmup_steps = 5 is not below max_steps = 3" in problem
    assert "never reaches learning_rate" in problem


def test_epochs_and_max_steps_together_warn(recipe_problems):
    [problem] = recipe_problems(GOOD.replace("max_steps = 10", "max_steps = 10\nnum_train_epochs = 3"))
    assert ":17:1: warning: train.num_train_epochs: both num_train_epochs and max_steps = 10 are set" in problem


def test_a_duplicate_key_is_named_with_where_it_was_first_set(recipe_problems):
    [problem] = recipe_problems(GOOD.replace("warmup_steps = 2", "warmup_steps = 2\nmax_steps = 20"))
    assert problem.endswith(':18:1: train.max_steps: duplicate key "max_steps" in [train]: first set at line 16; '
                            "TOML allows each key once, so delete one of the two")
    assert "Cannot overwrite" not in problem


def test_a_duplicate_key_at_the_end_of_the_file_and_a_twice_declared_table(recipe_problems):
    [problem] = recipe_problems(GOOD + 'use = "merged"\n')
    assert ':21:1: export[0].use: duplicate key "use" in [export[0]]: first set at line 20' in problem
    [problem] = recipe_problems(GOOD + "\n[adapt]\nalpha = 16\n")
    assert ":22:1: adapt: table [adapt] is declared twice; first declared at line 7" in problem


def test_openai_standardizer_suggests_messages(recipe_problems):
    [problem] = recipe_problems(GOOD.replace('dataset = "org/data"', 'dataset = "org/data"\nstandardizer = "openai"'))
    assert ":13:1: format.standardizer.use: unknown dataset format 'openai'; did you mean 'messages'?" in problem


def test_rows_with_an_empty_answer_are_counted_and_named(tmp_path, tiny_model_dir):
    import json

    from click.testing import CliRunner

    from recipetune.cli import build_cli

    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": "" if i == 1 else f"Answer {i}."}]} for i in range(3)]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'name = "e"\n[load]\nuse = "hf"\nmodel = "{tiny_model_dir}"\n'
                      f'[format]\ndataset = "{data}"\nstandardizer = "messages"\ncache = false\n'
                      '[train]\nuse = "sft"\nmax_steps = 2\nwarmup_steps = 0\n')
    result = CliRunner().invoke(build_cli(), ["data", str(recipe), "--output-dir", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "warning: 1 of 3 rows have an empty answer" in result.output
    assert 'op = "drop_empty"' in result.output and "Question 1?" in result.output


def test_an_unknown_standardizer_does_not_hide_the_checks_across_sections(recipe_problems):
    # the issue's own first pass: standardizer = "openai" hid train.eval_steps until it was fixed
    text = (GOOD.replace('dataset = "org/data"', 'dataset = "org/data"\nstandardizer = "openai"')
            .replace("max_steps = 10", "max_steps = 10\neval_steps = 5"))
    problems = recipe_problems(text)
    joined = "\n".join(problems)
    assert "format.standardizer.use: unknown dataset format 'openai'; did you mean 'messages'?" in joined
    assert "train.eval_steps: eval_steps needs a validation set" in joined
    assert len(problems) == 2, problems
