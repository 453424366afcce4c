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
    full = estimate(LLAMA32_3B, bits=16, lora_r=None, batch=2, seq=2048, checkpointing=True, optim="adamw_torch")
    assert qlora.weights_gib < 3.0 < full.weights_gib
    assert qlora.total_gib * 5 < full.total_gib


SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Peak reserved GiB measured on an H100/H200 (bench/gpu/results/2026-11-25-h100.jsonl, stack-facts 2026-12-02):
# QLoRA r=16 on the seven projections, batch 2 x 2048, AdamW 8-bit; unsloth: recipe run and raw Unsloth loop.
MEASURED = [
    (LLAMA32_1B, "unsloth", "unsloth", 2.07), (LLAMA32_1B, "unsloth", "unsloth", 1.78),
    (LLAMA32_3B, "unsloth", "unsloth", 3.47), (LLAMA32_3B, "unsloth", "unsloth", 3.21),
    (LLAMA32_1B, "hf", True, 3.289), (LLAMA32_3B, "hf", True, 5.934),
]
# Packed rows (bench/results/packing-2026-12-02-h200.jsonl, H200): micro-batches of 2 and 8 rows of 2048 tokens.
MEASURED_PACKED = [(2, 1.914), (8, 2.939)]


@pytest.mark.parametrize("cfg,backend,checkpointing,measured", MEASURED)
def test_estimate_is_within_15_percent_of_measured_peaks(cfg, backend, checkpointing, measured):
    est = estimate(cfg, bits=4, lora_r=16, batch=2, seq=2048, checkpointing=checkpointing, backend=backend,
                   optim="adamw_8bit", target_modules=SEVEN)
    assert abs(est.total_gib / measured - 1) <= 0.15, f"estimate {est.total_gib:.2f} GiB vs measured {measured} GiB"


@pytest.mark.parametrize("rows,measured", MEASURED_PACKED)
def test_estimate_of_packed_micro_batches_is_within_15_percent(rows, measured):
    est = estimate(LLAMA32_1B, bits=4, lora_r=16, batch=rows, seq=2048, checkpointing="unsloth", backend="unsloth",
                   target_modules=SEVEN)
    assert abs(est.total_gib / measured - 1) <= 0.15, f"estimate {est.total_gib:.2f} GiB vs measured {measured} GiB"


def test_a_fitting_run_is_never_refused_and_one_that_cannot_fit_is(tmp_path):
    from recipetune_plugins.memory_estimate import fit_verdict

    seed = estimate(LLAMA32_3B, bits=4, lora_r=16, batch=2, seq=2048, checkpointing="unsloth", backend="unsloth",
                    target_modules=SEVEN)
    assert fit_verdict(seed, 14.7, "T4")[0] == "fits"  # the notebook's setup runs on a free Colab T4
    assert fit_verdict(seed, 3.3, "a small GPU")[0] == "tight"  # within the estimate's error: a warning, no refusal
    big = estimate(LLAMA32_3B, bits=16, lora_r=16, batch=64, seq=2048, checkpointing=False, target_modules=SEVEN)
    verdict, fix = fit_verdict(big, 14.7, "T4")
    assert verdict == "does not fit" and "tokens per micro-batch" in fix and "gradient_checkpointing" in fix


def test_a_run_that_cannot_fit_is_refused_with_the_fix_at_its_line(cli, tmp_path, tiny_model_dir, sharegpt_file):
    from recipetune.testing import tiny_recipe_text

    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe_text(tiny_model_dir, sharegpt_file))
    result = cli("run", str(recipe), "--output-dir", str(tmp_path / "o"), "train.max_steps=1",
                 "train.per_device_train_batch_size=100000", "load.max_seq_length=100000")
    assert result.returncode == 2
    assert f"{recipe}:7:1: load.model: this run does not fit" in result.stderr
    assert "Fix: at most ~" in result.stderr
    ok = cli("validate", str(recipe))
    assert "training needs roughly" in ok.stdout


def test_plan_shows_memory_by_part_and_fit_for_a_target_gpu(cli, tmp_path, tiny_model_dir, sharegpt_file):
    import json

    from recipetune.testing import tiny_recipe_text

    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe_text(tiny_model_dir, sharegpt_file))
    result = cli("plan", str(recipe), "--gpu", "T4")
    assert result.returncode == 0, result.stderr
    for text in ("target: T4", "weights", "activations", "logits and loss", "peak (reserved)", "fit: fits in 14.7 GiB",
                 "packing: on", "steps: 3"):
        assert text in result.stdout
    data = json.loads(cli("plan", str(recipe), "--gpu", "24GiB", "--json").stdout)
    assert data["verdict"] == "fits" and data["target_gib"] == 24 and data["packing"] is True
    too_big = cli("plan", str(recipe), "--gpu", "1GiB", "--no-data", "train.per_device_train_batch_size=100000")
    assert too_big.returncode == 3 and "does not fit" in too_big.stdout


def test_plan_of_a_recipe_that_does_not_train_estimates_no_training(cli, tmp_path, tiny_model_dir):
    recipe = tmp_path / "convert.toml"
    recipe.write_text(f'name = "c"\n[load]\nuse = "hf"\nmodel = "{tiny_model_dir}"\n[[export]]\nuse = "merged"\n')
    result = cli("plan", str(recipe), "--gpu", "T4")
    assert result.returncode == 0, result.stderr
    assert "training: none" in result.stdout and "activations" not in result.stdout


def test_plan_knows_the_seed_models_without_downloading_them(cli):
    result = cli("plan", "recipes/llama32_finetome.toml", "--gpu", "H100", "--no-data")
    assert result.returncode == 0, result.stderr
    assert "24,313,856 trainable parameters" in result.stdout and "fit: fits" in result.stdout
