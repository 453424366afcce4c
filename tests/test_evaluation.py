"""Evaluation that decides: eval loss in metrics.jsonl, early stopping, the best weights kept and exported."""

from __future__ import annotations

import json

import pytest

from recipetune import load_recipe_text
from recipetune.plugins import get_plugin_manager
from recipetune.runner import execute, prepare_run
from recipetune.testing import tiny_recipe_text, write_sharegpt

HELD_OUT = 'chat_template = "tokenizer"\nvalidation_fraction = 0.15\ntest_fraction = 0.15'


def recipe_text(model_dir, data, train_extra="", tail=""):
    text = tiny_recipe_text(model_dir, data, extra=train_extra).replace('chat_template = "tokenizer"', HELD_OUT)
    return text + tail


def test_decisions_on_evaluations_that_never_run_are_errors_at_their_line(recipe_problems, tiny_model_dir, sharegpt_file):
    problems = recipe_problems(tiny_recipe_text(tiny_model_dir, sharegpt_file, extra=(
        'keep = "best"\nearly_stopping_patience = 2\nlr_scheduler_type = "reduce_lr_on_plateau"\n'
        'metric_for_best_model = "eval_bleu"')))
    text = "\n".join(problems)
    for key in ("train.keep", "train.early_stopping_patience", "train.lr_scheduler_type"):
        assert f"{key}: " in text and "set train.eval_steps" in text, key
    assert "warning: train.metric_for_best_model: 'eval_bleu' is not a metric" in text
    assert all(":" in p.split(" ")[0] for p in problems), "each problem names its file and line"


def test_rouge_needs_a_test_split_and_answers_to_split_at(recipe_problems, tiny_model_dir, sharegpt_file):
    text = tiny_recipe_text(tiny_model_dir, sharegpt_file) + '\n[[report]]\nuse = "rouge"\n'
    assert any("needs a test split: set format.test_fraction" in p for p in recipe_problems(text))
    text = recipe_text(tiny_model_dir, sharegpt_file, tail='\n[[report]]\nuse = "rouge"\n').replace(
        'dataset = ', 'train_on = "all"\ndataset = ')
    assert any('needs format.train_on = "assistant"' in p for p in recipe_problems(text))
    assert recipe_problems(recipe_text(tiny_model_dir, sharegpt_file, tail='\n[[report]]\nuse = "rouge"\n')) == []


def test_prompt_and_reference_split_at_the_last_trained_span():
    from recipetune_plugins.rouge_reporter import prompt_and_reference

    ids = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    labels = [-100, -100, 3, 4, -100, -100, -100, 8, 9]
    assert prompt_and_reference(ids, labels) == ([1, 2, 3, 4, 5, 6, 7], [8, 9])
    assert prompt_and_reference(ids, [-100] * 9) is None
    assert prompt_and_reference(ids, ids) is None, "all trained (plain text): no prompt"


@pytest.mark.slow
def test_early_stopping_keeps_and_exports_the_best_weights_not_the_last(tmp_path, tiny_model_dir):
    # a learning rate far too high: the eval loss is best at the first evaluation and worse after it
    data = write_sharegpt(tmp_path / "chat.jsonl", rows=40)
    pm = get_plugin_manager()
    text = recipe_text(tiny_model_dir, data, train_extra=(
        'eval_steps = 2\nsave_steps = 2\nkeep = "best"\nearly_stopping_patience = 2\nlr_scheduler_type = "constant"'),
        tail='\n[[export]]\nuse = "lora"\n')
    recipe = load_recipe_text(text, recipe_dir=tmp_path, pm=pm, overrides=["train.max_steps=12", "train.learning_rate=10.0"])
    run = execute(prepare_run(recipe, pm, tmp_path / "run"))

    metrics = run.read_metrics()
    evals = [(m["step"], m["eval_loss"]) for m in metrics if "eval_loss" in m]
    last = max(m["step"] for m in metrics if "loss" in m)
    best_step, best_value = min(evals, key=lambda e: e[1])
    assert [s for s, _ in evals] == list(range(2, last + 1, 2)), "an eval_loss line every eval_steps"
    assert last < 12 and run.state["early_stopped_at"] == last, "stopped early"
    worse = [v for s, v in evals if s > best_step]
    assert len(worse) == 2 and all(v >= best_value for v in worse), "after 2 evaluations without improvement"

    best = json.loads((run.output_dir / "best" / "best.json").read_text())
    assert (best["step"], best["metric"]) == (best_step, "eval_loss") and best["value"] == pytest.approx(best_value)
    assert run.state["kept"]["keep"] == "best" and run.state["kept"]["last_step"] == last

    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    def adapter_weights(folder):
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), folder)
        return {n: p.detach() for n, p in model.named_parameters() if "lora_" in n}

    kept = load_file(str(run.output_dir / "best" / "weights.safetensors"))
    exported = adapter_weights(run.output_dir / "artifacts" / "lora")
    last_checkpoint = adapter_weights(run.checkpoints_dir / f"checkpoint-{last}")
    assert set(exported) == set(kept)
    assert all(torch.equal(exported[n], kept[n]) for n in kept), "the exported adapter is the best one"
    assert not all(torch.equal(exported[n], last_checkpoint[n]) for n in kept), "and not the last step's"
    lora = next(a for a in run.artifacts if a.kind == "lora")
    assert lora.details["weights"] == "best" and f"at step {best_step}" in lora.description
    resolved = json.loads((run.output_dir / "resolved.json").read_text())
    assert resolved["artifacts"][0]["weights"] == "best"

    # Resumed from a checkpoint after the best evaluation: that best is kept (its steps do not run again), the
    # early-stopping count continues, and the export is again the best weights.
    import shutil

    shutil.rmtree(run.checkpoints_dir / f"checkpoint-{last}")
    resumed = execute(prepare_run(recipe, pm, tmp_path / "run", resume=True))
    assert resumed.state["kept"]["step"] == best_step and resumed.state["kept"]["last_step"] == last
    again = adapter_weights(run.output_dir / "artifacts" / "lora")
    assert all(torch.equal(again[n], kept[n]) for n in kept), "the resumed run exports the same best weights"
