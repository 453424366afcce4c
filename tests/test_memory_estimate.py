"""The plan's memory estimate: parameter counts match real models; too-big runs warn before loading."""

from __future__ import annotations

import pytest

from recipetune_plugins.memory_estimate import count_parameters, estimate

LLAMA32_1B = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                  intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True)
LLAMA32_3B = dict(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8, head_dim=128,
                  intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True)


@pytest.mark.parametrize("cfg", [LLAMA32_1B, LLAMA32_3B], ids=["1B", "3B"])
def test_parameter_count_equals_the_real_architecture(cfg):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**cfg))
    real = sum(p.numel() for p in model.parameters())
    assert count_parameters(cfg)[0] == real


def test_4bit_lora_needs_far_less_than_full_precision():
    qlora = estimate(LLAMA32_3B, bits=4, lora_r=16, batch=2, seq=2048, checkpointing=True)
    full = estimate(LLAMA32_3B, bits=16, lora_r=None, batch=2, seq=2048, checkpointing=True)
    assert qlora.weights_gib < 3.0 < full.weights_gib
    assert qlora.total_gib * 5 < full.total_gib


def test_a_run_too_big_for_the_machine_warns_at_its_line(cli, tmp_path, tiny_model_dir, sharegpt_file):
    from recipetune.testing import tiny_recipe_text

    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe_text(tiny_model_dir, sharegpt_file))
    result = cli("run", str(recipe), "--output-dir", str(tmp_path / "o"), "train.max_steps=1",
                 "train.per_device_train_batch_size=100000", "load.max_seq_length=100000")
    assert f"{recipe}:7:1: warning: load.model: this run may not fit" in result.stderr
    ok = cli("validate", str(recipe))
    assert "training needs roughly" in ok.stdout
