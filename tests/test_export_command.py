"""A trained model you can reach (issue 15, items 9, 10, 11, 14): a LoRA-only run is chatted with, exported to GGUF
and merged afterwards with ``recipe export``; its adapter names the recipe's base model and has a model card; a
GGUF written without llama.cpp says so and is checked later.

The base model is a tiny Llama written as a GGUF file, so the run converts it into a cache folder (as the quickstart
does with SmolLM2): the path peft would have written into adapter_config.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("llama_cpp")

from recipetune import load_recipe_text  # noqa: E402
from recipetune.cli import build_cli  # noqa: E402
from recipetune.plugins import get_plugin_manager  # noqa: E402
from recipetune.runner import execute, prepare_run  # noqa: E402
from recipetune.testing import make_tiny_llama, tiny_recipe_text, write_sharegpt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A tiny model, given to the recipe as a GGUF file, trained for 3 real steps; only the adapter is exported."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipetune_plugins.gguf.vocab import vocab_metadata
    from recipetune_plugins.gguf.writer import write_gguf

    base = tmp_path_factory.mktemp("lora-run")
    folder = make_tiny_llama(base / "model", init_std=0.1)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    gguf_file = write_gguf(model, vocab_metadata(tokenizer, model.get_input_embeddings().weight.shape[0], "<|im_end|>"),
                           base / "tiny-base.gguf", "f32", name="tiny-base", chat_template=tokenizer.chat_template)
    old_cache = os.environ.get("RECIPETUNE_CACHE")
    os.environ["RECIPETUNE_CACHE"] = str(base / "cache")
    pm = get_plugin_manager()
    text = tiny_recipe_text(gguf_file, write_sharegpt(base / "chat.jsonl"), extra='\n[[export]]\nuse = "lora"\n')
    recipe = load_recipe_text(text, recipe_dir=base, pm=pm)
    run = execute(prepare_run(recipe, pm, base / "run"))
    yield run, gguf_file
    if old_cache is None:
        os.environ.pop("RECIPETUNE_CACHE", None)
    else:
        os.environ["RECIPETUNE_CACHE"] = old_cache


def _recipe(*args: str, input: str | None = None):
    return CliRunner().invoke(build_cli(), list(args), input=input, catch_exceptions=False)


@pytest.mark.slow
def test_the_adapter_names_the_recipes_base_model_and_carries_a_model_card(lora_run):
    run, gguf_file = lora_run
    adapter = run.artifacts_dir / "lora"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(gguf_file)  # as the recipe gave it, not the cache folder
    card = (adapter / "README.md").read_text()
    assert card.startswith(f'---\nbase_model: "{gguf_file}"\nlibrary_name: peft\n')
    for part in ("## Base model", "## Data", "`chat.jsonl` read as `sharegpt`", "## Metrics", "| optimizer steps | 3 |",
                 "## How to load", "AutoPeftModelForCausalLM.from_pretrained", "## Recipe", 'name = "tiny"'):
        assert part in card, part


@pytest.mark.slow
def test_a_lora_only_run_is_chatted_with_then_exported_without_training(lora_run):
    run, _ = lora_run
    folder = str(run.output_dir)
    prompt = ["--prompt", "What is 2 + 2?", "--max-tokens", "6", "--threads", "2"]
    by_run = _recipe("generate", folder, *prompt)
    assert by_run.exit_code == 0, by_run.output
    by_adapter = _recipe("generate", str(run.artifacts_dir / "lora"), *prompt)
    assert by_adapter.exit_code == 0 and by_adapter.stdout == by_run.stdout

    exported = _recipe("export", folder, "--to", "gguf", "-q", "f16", "--to", "merged", "--dtype", "float32",
                       "--threads", "2")
    assert exported.exit_code == 0, exported.output
    gguf_file = run.artifacts_dir / "gguf" / "tiny-f16.gguf"
    assert f"gguf: {gguf_file}" in exported.stdout and (run.artifacts_dir / "merged" / "config.json").exists()
    resolved = json.loads((run.output_dir / "resolved.json").read_text())
    f16 = next(a for a in resolved["artifacts"] if a["kind"] == "gguf")
    assert f16["verification"]["passed"]
    report = (run.output_dir / "report.md").read_text()
    assert "## Exported with recipe export" in report and "-> PASS" in report
    # the adapter merged in memory answers exactly as the merged folder the export wrote
    by_merged = _recipe("generate", str(run.artifacts_dir / "merged"), *prompt)
    assert by_merged.stdout == by_adapter.stdout
    mask = os.umask(0)
    os.umask(mask)
    for path in (run.artifacts_dir / "lora", run.artifacts_dir / "merged"):  # artifacts follow the umask (item 8)
        assert path.stat().st_mode & 0o777 == 0o777 & ~mask, path
        for file in path.glob("*.safetensors"):
            assert file.stat().st_mode & 0o777 == 0o666 & ~mask, file
    modelfile = (run.artifacts_dir / "gguf" / "Modelfile").read_text()
    assert "PARAMETER num_ctx 512" in modelfile  # a chat's context (the tiny model's 512 positions), not the trained 128


@pytest.mark.slow
def test_a_gguf_written_without_llama_cpp_is_unchecked_then_checked_later(lora_run, monkeypatch, caplog):
    # llama-cpp-python is installed here; its absence is simulated (a machine without it, like the lent GPU's image)
    from recipetune_plugins import export_command
    from recipetune_plugins.gguf import exporter

    run, _ = lora_run
    monkeypatch.setattr(exporter, "llama_cpp_available", lambda: False)
    [gguf, _modelfile] = export_command.export_run(str(run.output_dir), ("gguf",), ("f32",), verify=True)
    assert gguf.details["verification"] == {"checked": False, "reason": "llama-cpp-python is not installed here"}
    report = (run.output_dir / "report.md").read_text()
    assert f"unchecked (llama-cpp-python is not installed here); where llama-cpp-python is installed, check it " \
           f"against the trained model with: recipe export {run.output_dir} --check" in report
    monkeypatch.undo()
    checked = _recipe("export", str(run.output_dir), "--check", "--threads", "2")
    assert checked.exit_code == 0, checked.output
    assert "tiny-f32.gguf: greedy equal on" in checked.stdout and "-> PASS" in checked.stdout
    resolved = json.loads((run.output_dir / "resolved.json").read_text())
    f32 = next(a for a in resolved["artifacts"] if a["kind"] == "gguf" and a["path"].endswith("tiny-f32.gguf"))
    assert f32["verification"]["passed"]


@pytest.mark.slow
def test_convert_recipe_refuses_an_adapter_folder_at_validate(lora_run):
    run, _ = lora_run
    result = _recipe("validate", str(ROOT / "recipes" / "convert_gguf.toml"), f"load.model={run.artifacts_dir / 'lora'}")
    assert result.exit_code == 2
    assert "is a LoRA adapter folder" in result.output
    assert f"recipe export {run.output_dir} --to gguf" in result.output


@pytest.mark.slow
def test_reset_in_chat_says_what_it_did(lora_run):
    run, _ = lora_run
    result = _recipe("chat", str(run.artifacts_dir / "lora"), "--max-tokens", "3", "--threads", "2",
                     input="hello\n/reset\n/exit\n")
    assert result.exit_code == 0, result.output
    assert "(history cleared: 1 exchange forgotten)" in result.output


def test_a_modelfile_gets_a_chat_context():
    from recipetune_plugins.gguf.modelfile import chat_context

    assert chat_context(256, 8192) == 4096  # the quickstart: trained on 256 tokens, SmolLM2 covers 8192
    assert chat_context(256, 512) == 512
    assert chat_context(8192, 131072) == 8192
