"""A chat template that needs tokens the tokenizer lacks (zephyr on a ChatML model), under LoRA.

Before ``format.new_tokens`` the tokens were added after LoRA wrapped the model: their rows were never
trained and peft saved the whole resized embedding as part of the "adapter" (237 KB instead of ~9 KB
for the tiny model; 236 MB instead of 19.6 MB for SmolLM2-135M), with nothing said.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recipetune import load_recipe_text
from recipetune.testing import tiny_recipe_text

ZEPHYR_TOKENS = ["'</s>'", "'<|system|>'", "'<|user|>'", "'<|assistant|>'"]


def _zephyr(model_dir: Path, data: Path, choice: str | None = None, extra: str = "") -> str:
    text = tiny_recipe_text(model_dir, data, extra=extra)
    line = 'chat_template = "zephyr"' + (f'\nnew_tokens = "{choice}"' if choice else "")
    return text.replace('chat_template = "tokenizer"', line)


def test_validate_refuses_tokens_lora_would_not_train_and_names_them(recipe_problems, tiny_model_dir, sharegpt_file):
    problems = recipe_problems(_zephyr(tiny_model_dir, sharegpt_file))
    assert len(problems) == 1, problems
    assert "format.chat_template" in problems[0] and not problems[0].split(": ", 1)[1].startswith("warning")
    assert all(token in problems[0] for token in ZEPHYR_TOKENS)
    assert 'format.new_tokens = "train"' in problems[0] and '"map"' in problems[0]
    # choosing is enough: a warning that says what follows
    for choice, says in (("train", "only their rows are trained"), ("map", "nothing is added")):
        warned = recipe_problems(_zephyr(tiny_model_dir, sharegpt_file, choice))
        assert len(warned) == 1 and "warning:" in warned[0] and says in warned[0], warned
    # full fine-tuning trains every row: no refusal by default
    full = _zephyr(tiny_model_dir, sharegpt_file).replace('[adapt]\nuse = "lora"\nr = 4\nalpha = 8\n'
                                                         'target_modules = ["q_proj", "v_proj"]\ngradient_checkpointing = false\n', "")
    assert "[adapt]" not in full
    assert not [p for p in recipe_problems(full) if "chat_template" in p]


def test_map_adds_no_token_and_ends_answers_with_the_tokenizers_own_end(tiny_model_dir, sharegpt_file):
    from transformers import AutoTokenizer

    from recipetune.data.pipeline import build_dataset

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    size = len(tokenizer)
    recipe = load_recipe_text(_zephyr(tiny_model_dir, sharegpt_file, "map"))
    dataset = build_dataset(recipe, tokenizer, use_cache=False)
    assert len(tokenizer) == size  # nothing added
    assert dataset.stats["stop_token"] == "<|im_end|>" and dataset.stats["samples_with_trained_stop_token"] == 16
    assert "'</s>' is written as the tokenizer's '<|im_end|>'" in dataset.stats["new_tokens"]["message"]
    assert "</s>" not in tokenizer.chat_template and "<|im_end|>" in tokenizer.chat_template
    sample = dataset.train[0]
    assert "<|user|>" in sample["text"] and tokenizer.unk_token_id not in sample["input_ids"]  # plain text


def test_refuse_stops_before_training_when_validate_could_not_know(tiny_model_dir, sharegpt_file, tmp_path):
    """A model whose tokenizer validate cannot read (here: the folder's tokenizer.json hidden) is refused
    at the adapt stage, before any step, with the same message."""
    from recipetune.plugins import get_plugin_manager
    from recipetune.problems import StageError
    from recipetune.runner import execute, prepare_run

    pm = get_plugin_manager()
    recipe = load_recipe_text(_zephyr(tiny_model_dir, sharegpt_file), pm=pm, overrides=["format.new_tokens=train"])
    recipe.format.new_tokens = None  # as a recipe validate could not check
    run = prepare_run(recipe, pm, output_dir=tmp_path / "run")
    with pytest.raises(StageError) as caught:
        execute(run)
    assert "adapt" in str(caught.value) and all(t in str(caught.value) for t in ZEPHYR_TOKENS)
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not (tmp_path / "run" / "metrics.jsonl").read_text()


@pytest.mark.slow
def test_train_trains_only_the_new_rows_and_the_adapter_stays_small(tmp_path, sharegpt_file, tied=False):
    """Untied input and output embeddings: the rows of both are trained (a tied model trains the one matrix)."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipetune.plugins import get_plugin_manager
    from recipetune.runner import execute, prepare_run
    from recipetune.testing import make_tiny_llama

    model_dir = make_tiny_llama(tmp_path / "m", tie_word_embeddings=tied)
    pm = get_plugin_manager()
    recipe = load_recipe_text(_zephyr(model_dir, sharegpt_file, "train", extra='[[export]]\nuse = "lora"\n'), pm=pm)
    run = execute(prepare_run(recipe, pm, output_dir=tmp_path / "run"))
    lora_dir = tmp_path / "run" / "artifacts" / "lora"
    tensors = load_file(lora_dir / "adapter_model.safetensors")
    # only LoRA matrices and the 4 new rows: no embedding matrix (443 x 64 floats = 113 KB each)
    assert not [k for k in tensors if k.endswith(("embed_tokens.weight", "lm_head.weight"))], list(tensors)
    rows = {k: v for k, v in tensors.items() if "trainable_tokens_delta" in k}
    assert [tuple(v.shape) for v in rows.values()] == [(4, 64)] * (1 if tied else 2), rows.keys()
    assert (lora_dir / "adapter_model.safetensors").stat().st_size < 20_000
    config = json.loads((lora_dir / "adapter_config.json").read_text())
    new_ids = config["trainable_token_indices"]["embed_tokens"]
    assert new_ids == [443, 444, 445, 446]
    # the rows were trained: they moved away from the values they started from
    layer = run.loaded.model.get_input_embeddings().token_adapter
    start, trained = layer.trainable_tokens_original["default"], layer.trainable_tokens_delta["default"].detach()
    assert not torch.allclose(start, trained)
    # the folder is an adapter that loads on the base model resized to its tokenizer, with those rows
    tokenizer = AutoTokenizer.from_pretrained(lora_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    base.resize_token_embeddings(len(tokenizer))
    merged = PeftModel.from_pretrained(base, lora_dir).merge_and_unload()
    assert torch.allclose(merged.get_input_embeddings().weight[new_ids], trained)
    assert run.state["new_tokens"]["tokens"] == ["</s>", "<|system|>", "<|user|>", "<|assistant|>"]
