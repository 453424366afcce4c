"""Trainable-parameter shares are counted as the model has them, and read the same in plan, log and report
(issue 15, item 1). A 4-bit model is loaded with bitsandbytes on the CPU (its nf4 kernels run there)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from recipetune.report import trainable_share
from recipetune_plugins.lora import LoraAdapter, LoraOptions
from recipetune_plugins.parameters import count_parameters, planned_parameters

pytest.importorskip("bitsandbytes")  # in the [dev] extra; 4-bit weights are what this is about


def _load(folder, four_bit: bool):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    kwargs = {"dtype": torch.float32}
    if four_bit:
        kwargs.update(quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                             bnb_4bit_compute_dtype=torch.float32),
                      device_map={"": "cpu"})
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    return SimpleNamespace(model=model, tokenizer=AutoTokenizer.from_pretrained(folder), backend="hf",
                           quantized="4bit" if four_bit else None, adapter=None, extras={}, max_seq_length=128)


def _adapt(loaded, options: LoraOptions, caplog, recipe):
    run = SimpleNamespace(recipe=recipe, logger=logging.getLogger("recipetune.test.params"), state={})
    with caplog.at_level(logging.INFO, logger="recipetune.test.params"):
        LoraAdapter(options).adapt(run, loaded)
    return run


def test_a_4bit_model_counts_its_parameters_unpacked(tiny_model_dir, sharegpt_file, caplog):
    import json

    from recipetune import load_recipe_text
    from recipetune.testing import tiny_recipe_text

    recipe = load_recipe_text(tiny_recipe_text(tiny_model_dir, sharegpt_file))

    options = LoraOptions(r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                        "down_proj"], gradient_checkpointing=False)
    full = _adapt(_load(tiny_model_dir, False), options, caplog, recipe).state["trainable_parameters"]
    caplog.clear()
    quantized = _load(tiny_model_dir, True)
    run = _adapt(quantized, options, caplog, recipe)
    assert any(type(p).__name__ == "Params4bit" for p in quantized.model.parameters())  # really packed
    # the same model has the same parameters, packed or not; peft's own count (PeftModel only) agrees
    assert run.state["trainable_parameters"] == full
    assert tuple(quantized.model.get_nb_trainable_parameters()) == full
    # the plan's figure, from config.json alone, is the one the run logs and the report shows
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert planned_parameters(cfg, options) == full
    assert f"LoRA: {trainable_share(*full)}" in caplog.text


def test_the_plan_shows_the_share_the_run_logs(cli, tmp_path, tiny_model_dir, sharegpt_file):
    import json

    from recipetune.testing import tiny_recipe_text

    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe_text(tiny_model_dir, sharegpt_file))
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    counts = planned_parameters(cfg, LoraOptions(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    hidden, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    kv = cfg["num_key_value_heads"] * hidden // cfg["num_attention_heads"]
    assert counts[0] == layers * 4 * ((hidden + hidden) + (hidden + kv))  # r (in + out) for q and v in every layer
    out = cli("validate", str(recipe))
    assert out.returncode == 0, out.stderr
    assert trainable_share(*counts) in out.stdout


def test_llama32_1b_plan_matches_unsloths_banner():
    """The measured H200 run: Unsloth printed 11,272,192 of 1,247,086,592 (0.90%) for the seed recipe's LoRA."""
    cfg = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
               intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True)
    counts = planned_parameters(cfg, LoraOptions(r=16))
    assert counts == (11_272_192, 1_247_086_592)
    assert trainable_share(*counts) == "11,272,192 trainable parameters of 1,247,086,592 (0.90%)"
