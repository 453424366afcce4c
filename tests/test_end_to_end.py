"""Real training runs of a tiny Llama on the CPU: the run folder, seeds, resume, artifacts, failures."""

from __future__ import annotations

from pathlib import Path

import json

import pytest

from recipetune import load_recipe_text
from recipetune.plugins import get_plugin_manager
from recipetune.problems import StageError
from recipetune.runner import execute, prepare_run
from recipetune.testing import tiny_recipe_text

EXPORTS = """
[[report]]
use = "memory"

[[report]]
use = "samples"
prompts = [{prompt = "What is 3 + 3?", expect = "6"}]
max_new_tokens = 8

[[export]]
use = "lora"

[[export]]
use = "merged"
dtype = "float32"
"""


def run_recipe(tmp_path, model_dir, data, out, extra="", overrides=(), resume=False):
    pm = get_plugin_manager()
    recipe = load_recipe_text(tiny_recipe_text(model_dir, data, extra=extra), recipe_dir=tmp_path, overrides=list(overrides), pm=pm)
    return execute(prepare_run(recipe, pm, out, resume=resume))


def losses(run):
    return [(m["step"], m["loss"]) for m in run.read_metrics() if "loss" in m]


@pytest.mark.slow
def test_run_folder_is_complete_and_artifacts_load(tmp_path, tiny_model_dir, sharegpt_file):
    run = run_recipe(tmp_path, tiny_model_dir, sharegpt_file, tmp_path / "run", extra=EXPORTS,
                     overrides=["train.max_steps=6", "train.learning_rate=5e-3"])
    out = run.output_dir
    for name in ("recipe.toml", "resolved.json", "metrics.jsonl", "report.md", "loss.png", "memory.png", "run.log"):
        assert (out / name).is_file(), name
    resolved = json.loads((out / "resolved.json").read_text())
    assert resolved["seed"] == 7
    assert resolved["recipe"]["train"]["max_steps"] == 6 and resolved["recipe"]["train"]["max_grad_norm"] == 1.0
    assert resolved["overrides"] == ["train.max_steps=6", "train.learning_rate=5e-3"]
    assert resolved["components"]["train"] == {"use": "sft", "plugin": "sft", "version": resolved["recipetune"]}
    assert "torch" in resolved["libraries"] and resolved["hardware"]["cpu_count"] >= 1
    assert set(resolved["timings"]) == {"load", "adapt", "format", "train", "report", "export"}
    assert "# command-line overrides: train.max_steps=6" in (out / "recipe.toml").read_text()
    steps = losses(run)
    assert [s for s, _ in steps] == [1, 2, 3, 4, 5, 6]
    assert steps[-1][1] < steps[0][1], "loss must fall on this easy data"
    report = (out / "report.md").read_text()
    for part in ("## Loss", "## Memory", "Host peak RSS", "## Samples before and after training", "## Artifacts"):
        assert part in report

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(out / "artifacts" / "merged")
    tok = AutoTokenizer.from_pretrained(out / "artifacts" / "merged")
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with_adapter = PeftModel.from_pretrained(base, out / "artifacts" / "lora")
    import torch

    ids = torch.tensor([tok("What is 3 + 3?")["input_ids"]])
    with torch.no_grad():
        a = merged(ids).logits
        b = with_adapter(ids).logits
        c = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits
    assert torch.allclose(a, b, atol=1e-4), "merged weights must equal base + adapter"
    assert not torch.allclose(a, c, atol=1e-4), "training must have changed the model"


def test_same_seed_same_losses_and_resume_continues_exactly(tmp_path, tiny_model_dir, sharegpt_file):
    full = run_recipe(tmp_path, tiny_model_dir, sharegpt_file, tmp_path / "full", overrides=["train.max_steps=4"])
    again = run_recipe(tmp_path, tiny_model_dir, sharegpt_file, tmp_path / "again", overrides=["train.max_steps=4"])
    assert losses(full) == losses(again)

    # A run stopped after its step-2 checkpoint, then resumed, ends where the uninterrupted run ends.
    stopped = run_recipe(tmp_path, tiny_model_dir, sharegpt_file, tmp_path / "resumed",
                         overrides=["train.max_steps=4", "train.save_steps=2"])
    ckpt = stopped.output_dir / "checkpoints"
    import shutil

    shutil.rmtree(ckpt / "checkpoint-4")
    lines = stopped.metrics_path.read_text().splitlines()
    stopped.metrics_path.write_text("\n".join(lines[:3]) + "\n")  # as if killed during step 4
    resumed = run_recipe(tmp_path, tiny_model_dir, sharegpt_file, tmp_path / "resumed",
                         overrides=["train.max_steps=4", "train.save_steps=2"], resume=True)
    assert [s for s, _ in losses(resumed)] == [1, 2, 3, 4]
    assert [l for _, l in losses(resumed)] == pytest.approx([l for _, l in losses(full)], rel=1e-5)


def test_a_failing_stage_names_stage_component_and_plugin(tmp_path, tiny_model_dir, sharegpt_file):
    with pytest.raises(StageError) as info:
        run_recipe(tmp_path, tiny_model_dir, sharegpt_file, tmp_path / "bad",
                   overrides=['adapt.target_modules=["no_such_proj"]'])
    message = str(info.value)
    assert message.startswith("stage 'adapt' failed in adapter \"lora\" (plugin lora)")
    assert "no_such_proj" in message


def test_cli_run_failure_is_one_clear_line(cli, tmp_path, tiny_model_dir, sharegpt_file):
    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe_text(tiny_model_dir, sharegpt_file))
    broken = tmp_path / "broken.jsonl"
    broken.write_text(Path(sharegpt_file).read_text().splitlines()[0] + "\n{not json\n")
    result = cli("run", str(recipe), "--output-dir", str(tmp_path / "o"), f"format.dataset={broken}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert 'error: format (dataset format "sharegpt" / chat template "tokenizer", plugin ' in result.stderr
    assert f"{broken}:2: not valid JSON" in result.stderr
    assert "Traceback" in (tmp_path / "o" / "run.log").read_text()


def test_a_missing_dataset_or_model_stops_before_loading_at_its_line(cli, tmp_path, tiny_model_dir, sharegpt_file):
    recipe = tmp_path / "r.toml"
    text = tiny_recipe_text(tiny_model_dir, sharegpt_file)
    recipe.write_text(text.replace(str(sharegpt_file), "data/missing.jsonl").replace(str(tiny_model_dir), "./no-model"))
    for args in (("validate",), ("run", "--output-dir", str(tmp_path / "o"))):
        result = cli(args[0], str(recipe), *args[1:])
        assert result.returncode == 2 and "Traceback" not in result.stderr
        lines = recipe.read_text().splitlines()
        model_line = next(i for i, line in enumerate(lines, 1) if "no-model" in line)
        data_line = next(i for i, line in enumerate(lines, 1) if "missing.jsonl" in line)
        assert f"r.toml:{model_line}:1: load.model: no such file or folder: {tmp_path / 'no-model'}" in result.stderr
        assert f"r.toml:{data_line}:1: format.dataset: no such file or folder: {tmp_path / 'data' / 'missing.jsonl'}" in result.stderr
    assert not (tmp_path / "o").exists()


def test_4bit_without_a_gpu_stops_before_loading(cli, tmp_path, tiny_model_dir, sharegpt_file):
    recipe = tmp_path / "r.toml"
    recipe.write_text(tiny_recipe_text(tiny_model_dir, sharegpt_file))
    result = cli("run", str(recipe), "--output-dir", str(tmp_path / "o"), "load.load_in_4bit=true")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "<command line>: load.load_in_4bit=true: 4-bit loading needs a CUDA GPU and this machine has none" in result.stderr
    assert "set load.load_in_4bit=false" in result.stderr
    assert not (tmp_path / "o").exists(), "nothing may be created before the check"


class _Disconnected:
    """A test adapter whose trainable weight never reaches the loss: the failure the zero-gradient guard catches
    (as bitsandbytes' CPU 4-bit path did in a real run)."""

    @staticmethod
    def register_adapters(register):
        from recipetune import Adapter

        class Disconnected(Adapter):
            name = "disconnected"

            def adapt(self, run, loaded):
                import torch

                for p in loaded.model.parameters():
                    p.requires_grad_(False)
                loaded.model.register_parameter("unused", torch.nn.Parameter(torch.zeros(4)))
                return loaded

        register(Disconnected)


def test_a_run_whose_gradients_are_zero_stops_with_a_clear_error(tmp_path, tiny_model_dir, sharegpt_file):
    from recipetune import UserError, hookimpl

    plugin = type("P", (), {"register_adapters": staticmethod(hookimpl(_Disconnected.register_adapters))})()
    pm = get_plugin_manager(extra_plugins=[(plugin, "disconnected-plugin")])
    text = tiny_recipe_text(tiny_model_dir, sharegpt_file).replace('use = "lora"\nr = 4\nalpha = 8\ntarget_modules = ["q_proj", "v_proj"]\ngradient_checkpointing = false', 'use = "disconnected"')
    recipe = load_recipe_text(text, recipe_dir=tmp_path, pm=pm, overrides=["train.max_steps=5"])
    with pytest.raises(StageError) as info:
        execute(prepare_run(recipe, pm, tmp_path / "z"))
    assert info.value.stage == "train" and isinstance(info.value.cause, UserError)
    assert "the gradient norm is 0 at the first 2 logged steps: nothing is being trained" in str(info.value)
