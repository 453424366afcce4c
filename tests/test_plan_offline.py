"""`recipe plan` reads only what is on this machine: a Hub model id whose tokenizer is not cached is never fetched."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli


def test_plan_of_an_uncached_hub_model_never_asks_the_network(tmp_path: Path):
    data = tmp_path / "chat.jsonl"
    data.write_text('{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}\n')
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'''name = "offline-plan"
[load]
use = "hf"
model = "unsloth/Llama-3.2-1B-Instruct"
[adapt]
use = "lora"
[format]
dataset = "{data}"
standardizer = "sharegpt"
chat_template = "llama-3.1"
[train]
use = "sft"
max_steps = 5
''')
    # A Hub endpoint on a closed local port: any request fails at once and huggingface_hub would retry (and say so).
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    out = run_cli("plan", str(recipe), "--gpu", "H100", env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert "Retry" not in text, text              # huggingface_hub prints "Retrying in 1s" before each new try
    assert "data: not read" in text          # said plainly, and the memory plan is still there
    assert "peak (reserved)" in text
