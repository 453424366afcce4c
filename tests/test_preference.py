"""Preference data and the dpo / orpo / kto trainers, on a tiny Llama trained for real on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipetune import load_recipe_text
from recipetune.plugins import get_plugin_manager
from recipetune.runner import execute, prepare_run
from recipetune_plugins.preference import Preference

SIGN = " -- Quill"


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def signed_pairs(n: int = 8) -> list[dict]:
    """The preferred answer is signed, the other is not: a preference a few steps of DPO can learn."""
    return [{"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}.{SIGN}", "rejected": f"{2 * i}."} for i in range(n)]


def recipe_text(model_dir: Path, data: Path, trainer: str, extra_train: str = "", load_extra: str = "",
                standardizer: str = "preference", exports: str = "") -> str:
    return f"""
name = "pref-{trainer}"
seed = 7

[load]
use = "hf"
model = "{model_dir}"
max_seq_length = 128
{load_extra}

[adapt]
use = "lora"
r = 4
alpha = 8
target_modules = ["q_proj", "v_proj", "o_proj"]
gradient_checkpointing = false

[format]
dataset = "{data}"
standardizer = "{standardizer}"
chat_template = "tokenizer"

[train]
use = "{trainer}"
max_steps = 5
per_device_train_batch_size = 4
gradient_accumulation_steps = 1
learning_rate = 5e-3
{extra_train}
{exports}
"""


def run_text(tmp_path: Path, text: str, out: Path):
    pm = get_plugin_manager()
    recipe = load_recipe_text(text, recipe_dir=tmp_path, pm=pm)
    run = prepare_run(recipe, pm, out)
    execute(run)
    return run


# ---------------------------------------------------------------- the format
def test_preference_rows_of_every_kind_become_prompt_and_answers():
    fmt = Preference()
    plain = fmt.parts({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."})
    assert plain.prompt == [{"role": "user", "content": "Hi?"}]
    assert plain.chosen == [{"role": "assistant", "content": "Hello."}] and plain.rejected[0]["content"] == "Go away."
    conversational = fmt.parts({"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi?"}],
                                "chosen": [{"role": "assistant", "content": "Hello."}],
                                "rejected": [{"role": "assistant", "content": "No."}]})
    assert [m["role"] for m in conversational.prompt] == ["system", "user"]
    # UltraFeedback: whole conversations sharing their first turns; the prompt column is a plain copy of the question
    ultra = {"prompt": "Say 1", "chosen": [{"role": "user", "content": "Say 1"}, {"role": "assistant", "content": "1"}],
             "rejected": [{"role": "user", "content": "Say 1"}, {"role": "assistant", "content": "2"}],
             "messages": [{"role": "user", "content": "Say 1"}, {"role": "assistant", "content": "1"}], "score_chosen": 9.0}
    found = fmt.parts(ultra)
    assert found.prompt == [{"role": "user", "content": "Say 1"}] and found.chosen[0]["content"] == "1"
    assert found.rejected[0]["content"] == "2"
    # Anthropic HH-RLHF transcripts; Orca DPO pairs (system, question, chosen, rejected)
    hh = fmt.parts({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: 2+2?\n\nAssistant: 4.",
                    "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: 2+2?\n\nAssistant: 5."})
    assert [m["role"] for m in hh.prompt] == ["user", "assistant", "user"] and hh.rejected[0]["content"] == "5."
    orca = fmt.parts({"system": "You are an AI.", "question": "2+2?", "chosen": "4", "rejected": "5"})
    assert orca.prompt == [{"role": "system", "content": "You are an AI."}, {"role": "user", "content": "2+2?"}]
    kto = fmt.parts({"prompt": "2+2?", "completion": "5", "label": False})
    assert kto.completion == [{"role": "assistant", "content": "5"}] and kto.label is False
    # the SFT view: prompt + chosen; an undesirable KTO answer is rendered but not trained
    assert fmt.standardize(ultra)[-1] == {"role": "assistant", "content": "1"}
    assert fmt.standardize({"prompt": "2+2?", "completion": "5", "label": False})[-1]["train"] is False
    for bad in ({"prompt": "Hi", "chosen": "a"}, {"prompt": "", "chosen": "a", "rejected": "b"},
                {"prompt": "Hi", "completion": "a", "label": "yes"}, {"chosen": [{"role": "user", "content": "x"}],
                                                                        "rejected": [{"role": "user", "content": "x"}]}):
        assert fmt.parts(bad) is None, bad


def test_auto_finds_preference_rows_before_messages_and_prompt_completion():
    from recipetune_plugins.standardizers import Auto

    ultra = [{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
              "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}],
              "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    assert Auto().resolve(ultra).name == "preference"
    assert Auto().resolve([{"prompt": "q", "completion": "a", "label": True}]).name == "preference"
    assert Auto().resolve([{"prompt": "q", "completion": "a"}]).name == "prompt_completion"


def test_pairs_mask_the_prompt_and_end_every_answer_with_the_stop_token(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from recipetune_plugins.preference_data import build_preference_data, check_pairs

    rows = signed_pairs(4) + [{"prompt": [{"role": "system", "content": "Sign."}, {"role": "user", "content": "Hi"}],
                               "chosen": [{"role": "assistant", "content": "Hi." + SIGN}],
                               "rejected": [{"role": "assistant", "content": "Hi."}]},
                              {"prompt": "broken", "chosen": 3, "rejected": "x"}]
    data = write_rows(tmp_path / "pairs.jsonl", rows)
    recipe = load_recipe_text(recipe_text(tiny_model_dir, data, "dpo"), recipe_dir=tmp_path, pm=get_plugin_manager())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    built = build_preference_data(recipe, tokenizer)
    assert built.stats["examples"] == 5 and built.stats["dropped_malformed"] == 1
    assert built.stats["answers_ending_with_stop_token"] == 10 and check_pairs(built.stats) is None
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for example in built.train:
        prompt = tokenizer.decode(example["prompt_ids"])
        assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
        assert example["chosen_ids"][-1] == stop and example["rejected_ids"][-1] == stop
        assert stop not in example["chosen_ids"][:-1]  # nothing after the stop token, no prompt token in the answer
    assert tokenizer.decode(built.train[0]["chosen_ids"]) == "0." + SIGN + "<|im_end|>"
    assert tokenizer.decode(built.train[4]["prompt_ids"]).startswith("<|im_start|>system\nSign.")
    # the same rows through the SFT pipeline: prompt + chosen, the answer and its stop token trained
    from recipetune.data.pipeline import build_dataset

    sft = build_dataset(recipe, AutoTokenizer.from_pretrained(tiny_model_dir), use_cache=False)
    assert sft.stats["standardizer"] == "preference" and sft.stats["samples_with_trained_stop_token"] == 5


def test_recipe_data_shows_pairs_with_their_trained_answers(cli, tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "kto.jsonl", [{"prompt": f"{i}+{i}?", "completion": f"{2 * i + i % 2}", "label": i % 2 == 0}
                                                for i in range(6)])
    recipe = tmp_path / "r.toml"
    recipe.write_text(recipe_text(tiny_model_dir, data, "kto", standardizer="auto"), encoding="utf-8")
    out = cli("data", str(recipe), "--json", "--output-dir", str(tmp_path / "d"))
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)["preference"]
    assert shown["stats"]["kind"] == "unpaired" and shown["stats"]["desirable"] == 3
    first = shown["examples"][0]
    assert first["prompt"].endswith("<|im_start|>assistant\n") and first["completion"] == "0<|im_end|>"
    assert first["label"] is True
    text = cli("data", str(recipe), "--output-dir", str(tmp_path / "d2"))
    assert text.returncode == 0, text.stderr
    assert "preference: 6 unpaired examples" in text.stdout and "⟦0<|im_end|>⟧" in text.stdout


# ---------------------------------------------------------------- the trainers (real steps on a CPU)
def _series(run, key):
    return [m[key] for m in run.read_metrics() if key in m]


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["dpo", "orpo", "kto"])
def test_each_trainer_learns_the_preference(tmp_path, tiny_model_dir, trainer):
    data = write_rows(tmp_path / "pairs.jsonl", signed_pairs(8))
    run = run_text(tmp_path, recipe_text(tiny_model_dir, data, trainer), tmp_path / "out")
    losses, margins = _series(run, "loss"), _series(run, "rewards/margins")
    assert len(losses) == 5 and losses[-1] < losses[0], losses
    assert len(margins) == 5 and sum(margins[-2:]) / 2 > margins[0], margins
    if trainer != "kto":
        assert _series(run, "rewards/accuracies")[-1] >= 0.5
    report = (run.output_dir / "report.md").read_text()
    assert "## Preference training" in report and "rewards/margins" in report
    assert (run.output_dir / "preference_rewards.png").stat().st_size > 0


@pytest.mark.slow
def test_dpo_chains_after_an_sft_run_with_the_sft_adapter_as_reference(tmp_path, tiny_model_dir, sharegpt_file):
    from recipetune.testing import tiny_recipe_text

    sft = run_text(tmp_path, tiny_recipe_text(tiny_model_dir, sharegpt_file, extra='\n[[export]]\nuse = "lora"\n'),
                   tmp_path / "sft")
    data = write_rows(tmp_path / "pairs.jsonl", signed_pairs(4))
    text = recipe_text(tiny_model_dir, data, "dpo", load_extra=f'adapter = "{sft.output_dir}"',
                       extra_train="max_steps = 2", exports='[[export]]\nuse = "lora"\n').replace("max_steps = 5\n", "")
    dpo = run_text(tmp_path, text, tmp_path / "dpo")
    log = (dpo.output_dir / "run.log").read_text() if (dpo.output_dir / "run.log").exists() else ""
    first = dpo.read_metrics()[0]
    # the reference is the SFT model (a frozen copy of its adapter): at the first step the policy equals it exactly;
    # with the base model as reference the SFT adapter's change would show as non-zero rewards
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0
    adapter = dpo.output_dir / "artifacts" / "lora"
    assert (adapter / "adapter_config.json").exists() and not (adapter / "ref").exists()
    assert "sft" not in log or "continuing from the adapter" in log


def test_recipe_checks_name_the_line_and_what_is_expected(recipe_problems, tmp_path, tiny_model_dir, sharegpt_file):
    data = write_rows(tmp_path / "pairs.jsonl", signed_pairs(2))
    wrong_format = recipe_problems(recipe_text(tiny_model_dir, sharegpt_file, "dpo", standardizer="sharegpt"))
    assert any("format.standardizer" in p and "needs preference rows" in p for p in wrong_format), wrong_format
    no_adapter = recipe_text(tiny_model_dir, data, "dpo").replace('[adapt]\nuse = "lora"\nr = 4\nalpha = 8\n'
                                                                 'target_modules = ["q_proj", "v_proj", "o_proj"]\n'
                                                                 'gradient_checkpointing = false\n', "")
    assert any("second copy of the model" in p for p in recipe_problems(no_adapter))
    kto = recipe_problems(recipe_text(tiny_model_dir, data, "kto"), ("train.per_device_train_batch_size=1",))
    assert any("train.per_device_train_batch_size" in p and "2 or more" in p for p in kto), kto
    loss = recipe_problems(recipe_text(tiny_model_dir, data, "dpo"), ('train.loss_type=["sigmoidd"]',))
    assert any("unknown DPO loss 'sigmoidd'" in p for p in loss), loss
    hub_first = recipe_problems(recipe_text(tiny_model_dir, data, "dpo", exports='[[export]]\nuse = "hub"\n'
                                            'repo = "org/x"\n\n[[export]]\nuse = "lora"\n'))
    assert any("export[0].use" in p and "last" in p for p in hub_first), hub_first
    bad_repo = recipe_problems(recipe_text(tiny_model_dir, data, "dpo", exports='[[export]]\nuse = "lora"\n\n'
                                           '[[export]]\nuse = "hub"\nrepo = "no slash"\n'))
    assert any("export[1].repo" in p and "ORG/NAME" in p for p in bad_repo), bad_repo
    missing = recipe_problems(recipe_text(tiny_model_dir, data, "dpo", load_extra='adapter = "nowhere"'))
    assert any("load.adapter" in p for p in missing), missing
