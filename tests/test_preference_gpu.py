"""The preference trainers on Unsloth's path (its patched TRL trainers, fast LoRA, 4-bit QLoRA). Needs an NVIDIA GPU
and Unsloth; skipped elsewhere (written on the 2-core CPU machine, not run there)."""

from __future__ import annotations

import importlib.util

import pytest

from test_preference import run_text, signed_pairs, write_rows


def _has_cuda() -> bool:
    if importlib.util.find_spec("unsloth") is None:
        return False
    import torch

    return torch.cuda.is_available()


def unsloth_recipe(model_dir, data, trainer: str) -> str:
    return f"""
name = "pref-unsloth-{trainer}"
seed = 7

[load]
use = "unsloth"
model = "{model_dir}"
max_seq_length = 128
load_in_4bit = true

[adapt]
use = "lora"
r = 8
alpha = 16
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]

[format]
dataset = "{data}"
standardizer = "preference"
chat_template = "tokenizer"

[train]
use = "{trainer}"
max_steps = 8
per_device_train_batch_size = 4
gradient_accumulation_steps = 1
learning_rate = 5e-3

[[export]]
use = "lora"
"""


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not _has_cuda(), reason="needs an NVIDIA GPU and Unsloth")
@pytest.mark.parametrize("trainer", ["dpo", "orpo", "kto"])
def test_unsloth_qlora_preference_training_learns_and_exports_the_adapter_alone(tmp_path, trainer):
    from recipetune.testing import make_tiny_llama

    model_dir = make_tiny_llama(tmp_path / "m", hidden_size=128, heads=4, kv_heads=2, intermediate_size=256)
    data = write_rows(tmp_path / "pairs.jsonl", signed_pairs(16))
    run = run_text(tmp_path, unsloth_recipe(model_dir, data, trainer), tmp_path / "out")
    metrics = run.read_metrics()
    losses = [m["loss"] for m in metrics if "loss" in m]
    margins = [m["rewards/margins"] for m in metrics if "rewards/margins" in m]
    assert losses[-1] < losses[0] and sum(margins[-2:]) / 2 > margins[0]
    adapter = run.output_dir / "artifacts" / "lora"
    assert (adapter / "adapter_model.safetensors").exists() and not (adapter / "ref").exists()
