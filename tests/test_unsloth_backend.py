"""The ``unsloth`` backend, on a CPU.

    *** Unsloth is MOCKED in this file. ***

This machine (and CI) has no NVIDIA GPU, and Unsloth only runs on one. A fake
``unsloth`` module is put in ``sys.modules`` (``monkeypatch``): its
``FastLanguageModel`` records every call and hands back a tiny randomly
initialised Llama (``recipetune.testing.make_tiny_llama``) and a real peft LoRA.
These tests therefore check recipetune's side (option mapping, dispatch,
preflight, validate warnings), not Unsloth's kernels; bench/gpu/ runs the real
thing on a GPU (docs/unsloth.md, "GPU smoke").
"""

from __future__ import annotations

import importlib.machinery
import logging
import os
import re
import sys
import tomllib
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT, run_cli

from recipetune import load_recipe, load_recipe_text
from recipetune.plugins import get_plugin_manager
from recipetune.runner import execute, prepare_run
from recipetune.testing import tiny_recipe_text
from recipetune_plugins import unsloth_backend
from recipetune_plugins.lora import LoraAdapter, LoraOptions
from recipetune_plugins.unsloth_backend import NO_GPU, UnslothBackend, UnslothOptions

FINETOME = ROOT / "recipes" / "llama32_finetome.toml"


# ---------------------------------------------------------------- the fake (MOCKED) unsloth
def make_fake_unsloth(calls: list[tuple[str, dict]]) -> types.ModuleType:
    """A stand-in for the ``unsloth`` package: records calls, returns a tiny HF model."""

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            calls.append(("from_pretrained", kwargs))
            model = AutoModelForCausalLM.from_pretrained(kwargs["model_name"])
            return model, AutoTokenizer.from_pretrained(kwargs["model_name"])

        @staticmethod
        def get_peft_model(model, **kwargs):
            from peft import LoraConfig, get_peft_model

            calls.append(("get_peft_model", kwargs))
            config = LoraConfig(r=kwargs["r"], lora_alpha=kwargs["lora_alpha"], lora_dropout=kwargs["lora_dropout"],
                                target_modules=kwargs["target_modules"], bias=kwargs["bias"], task_type="CAUSAL_LM")
            return get_peft_model(model, config)

        @staticmethod
        def for_inference(model):
            calls.append(("for_inference", {"training": model.training}))
            model.eval()
            return model

        @staticmethod
        def for_training(model, use_gradient_checkpointing=None):
            calls.append(("for_training", {}))
            model.train()
            return model

    def unsloth_train(trainer, **kwargs):
        calls.append(("unsloth_train", kwargs))
        return trainer.train(**kwargs)

    module = types.ModuleType("unsloth")
    module.__spec__ = importlib.machinery.ModuleSpec("unsloth", None)
    module.__doc__ = "FAKE unsloth for CPU tests (recipetune tests/test_unsloth_backend.py)"
    module.FastLanguageModel = FastLanguageModel
    module.unsloth_train = unsloth_train
    return module


@pytest.fixture
def fake_unsloth(monkeypatch):
    """MOCKED Unsloth (no GPU here): ``sys.modules["unsloth"]`` is a recorder; returns its list of calls."""
    calls: list[tuple[str, dict]] = []
    monkeypatch.setitem(sys.modules, "unsloth", make_fake_unsloth(calls))
    return calls


def fake_run():
    """What the stages read of a one-process Run; its real recipe has no [format], so no template adds tokens."""
    from recipetune import load_recipe_text

    recipe = load_recipe_text('name = "unsloth-test"\n\n[load]\nuse = "unsloth"\nmodel = "org/model"\n\n'
                              '[adapt]\nuse = "lora"\n\n[[export]]\nuse = "lora"\n')
    return SimpleNamespace(recipe=recipe, logger=logging.getLogger("test-unsloth"), state={},
                           rank=0, world_size=1, is_main=True)


def called(calls, name):
    return [kw for n, kw in calls if n == name]


# ---------------------------------------------------------------- option mapping
def test_from_pretrained_gets_every_option(fake_unsloth, tiny_model_dir, monkeypatch):
    import torch

    monkeypatch.setenv("MY_HUB_TOKEN", "hf_secret_value")
    options = UnslothOptions(model=str(tiny_model_dir), revision="main", dtype="bfloat16", max_seq_length=1024,
                             load_in_4bit=False, full_finetuning=True, trust_remote_code=True, token_env="MY_HUB_TOKEN")
    loaded = UnslothBackend(options).load(fake_run())
    (kwargs,) = called(fake_unsloth, "from_pretrained")
    assert kwargs == {"model_name": str(tiny_model_dir), "max_seq_length": 1024, "dtype": torch.bfloat16,
                      "load_in_4bit": False, "full_finetuning": True, "token": "hf_secret_value",
                      "trust_remote_code": True, "revision": "main"}
    assert loaded.backend == "unsloth" and loaded.max_seq_length == 1024 and loaded.quantized is None
    assert loaded.extras["unsloth"] is sys.modules["unsloth"].FastLanguageModel
    assert loaded.source_dir == tiny_model_dir and loaded.tokenizer.pad_token is not None


def test_from_pretrained_defaults(fake_unsloth, tiny_model_dir, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    loaded = UnslothBackend(UnslothOptions(model=str(tiny_model_dir))).load(fake_run())
    (kwargs,) = called(fake_unsloth, "from_pretrained")
    assert kwargs["dtype"] is None, 'dtype "auto" lets Unsloth choose'
    assert kwargs["load_in_4bit"] is True and kwargs["full_finetuning"] is False
    assert kwargs["token"] is None and kwargs["trust_remote_code"] is False and kwargs["revision"] is None
    assert kwargs["max_seq_length"] == 2048
    assert loaded.quantized == "4bit"


def test_lora_dispatches_to_unsloth_get_peft_model_with_every_option(fake_unsloth, tiny_model_dir):
    loaded = UnslothBackend(UnslothOptions(model=str(tiny_model_dir), load_in_4bit=False)).load(fake_run())
    options = LoraOptions(r=8, alpha=32, dropout=0.05, bias="lora_only", target_modules=["q_proj", "v_proj"],
                          modules_to_save=["lm_head"], use_rslora=True, use_dora=True, gradient_checkpointing=True,
                          random_state=11, loftq_config={"loftq_bits": 4})
    run = fake_run()
    adapted = LoraAdapter(options).adapt(run, loaded)
    (kwargs,) = called(fake_unsloth, "get_peft_model")
    assert kwargs == {"r": 8, "target_modules": ["q_proj", "v_proj"], "lora_alpha": 32, "lora_dropout": 0.05,
                      "bias": "lora_only", "use_gradient_checkpointing": True, "random_state": 11, "use_rslora": True,
                      "loftq_config": {"loftq_bits": 4}, "modules_to_save": ["lm_head"], "max_seq_length": 2048,
                      "use_dora": True, "init_lora_weights": "loftq"}
    assert adapted.adapter == "lora" and run.state["trainable_parameters"][0] > 0


@pytest.mark.parametrize("checkpointing", ["unsloth", True, False])
def test_gradient_checkpointing_goes_to_unsloth_as_written(fake_unsloth, tiny_model_dir, checkpointing):
    loaded = UnslothBackend(UnslothOptions(model=str(tiny_model_dir), load_in_4bit=False)).load(fake_run())
    LoraAdapter(LoraOptions(gradient_checkpointing=checkpointing, target_modules=["q_proj"])).adapt(fake_run(), loaded)
    (kwargs,) = called(fake_unsloth, "get_peft_model")
    assert kwargs["use_gradient_checkpointing"] == checkpointing
    assert kwargs["loftq_config"] == {} and "use_dora" not in kwargs and "init_lora_weights" not in kwargs
    assert kwargs["lora_dropout"] == 0.0 and kwargs["bias"] == "none"


def test_lora_on_hf_backend_never_touches_unsloth(fake_unsloth, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipetune import Loaded

    loaded = Loaded(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                    tokenizer=AutoTokenizer.from_pretrained(tiny_model_dir), backend="hf", model_name="tiny",
                    extras={"unsloth": sys.modules["unsloth"].FastLanguageModel})
    LoraAdapter(LoraOptions(target_modules=["q_proj"], gradient_checkpointing=False)).adapt(fake_run(), loaded)
    assert fake_unsloth == []


# ---------------------------------------------------------------- a whole run, MOCKED unsloth, on the CPU
@pytest.mark.slow
def test_run_uses_unsloth_for_load_adapt_train_and_generation(fake_unsloth, tmp_path, tiny_model_dir, sharegpt_file):
    text = tiny_recipe_text(tiny_model_dir, sharegpt_file, extra="""
[[report]]
use = "samples"
prompts = [{prompt = "What is 3 + 3?", expect = "6"}]
max_new_tokens = 4
""").replace('use = "hf"', 'use = "unsloth"\nload_in_4bit = false')
    pm = get_plugin_manager()
    recipe = load_recipe_text(text, recipe_dir=tmp_path, overrides=["train.max_steps=2"], pm=pm)
    run = execute(prepare_run(recipe, pm, tmp_path / "run"))
    order = [name for name, _ in fake_unsloth]
    # load -> adapt -> samples "before" (inference, back to training) -> train -> samples "after"
    assert order == ["from_pretrained", "get_peft_model", "for_inference", "for_training", "for_training",
                     "unsloth_train", "for_inference", "for_training"], order
    assert [m["step"] for m in run.read_metrics() if "loss" in m] == [1, 2]
    assert run.state["samples"]["after"]["answers"][0] is not None


# ---------------------------------------------------------------- preflight: no GPU, nothing loaded
def test_preflight_without_gpu_names_load_use(monkeypatch, fake_unsloth):
    monkeypatch.setattr(unsloth_backend, "has_nvidia_gpu", lambda: False)
    recipe = load_recipe(FINETOME)
    problems = list(recipe.load.component.preflight(recipe))
    assert [(p.path, p.message, p.severity) for p in problems] == [("load.use", NO_GPU, "error")]
    assert NO_GPU == 'backend "unsloth" needs an NVIDIA GPU; load.use = "hf" runs anywhere'
    monkeypatch.setattr(unsloth_backend, "has_nvidia_gpu", lambda: True)
    assert list(recipe.load.component.preflight(recipe)) == []


def test_has_nvidia_gpu_is_false_here_without_importing_torch_when_there_is_no_driver():
    if os.path.exists("/proc/driver/nvidia/version"):
        pytest.skip("this machine has an NVIDIA driver")
    code = ("import sys, shutil; shutil.which = lambda *a, **k: None\n"
            "from recipetune_plugins.unsloth_backend import has_nvidia_gpu\n"
            "print(has_nvidia_gpu(), 'torch' in sys.modules)")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_recipe_run_without_gpu_exits_non_zero_before_loading_anything(tmp_path):
    if unsloth_backend.has_nvidia_gpu():
        pytest.skip("this machine has an NVIDIA GPU")
    # A fake unsloth package (MOCKED) that leaves a mark if anything imports it.
    fake = tmp_path / "fake_site" / "unsloth"
    fake.mkdir(parents=True)
    marker = tmp_path / "unsloth-was-imported"
    (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    out_dir = tmp_path / "run"
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "fake_site"), os.environ.get("PYTHONPATH", "")]),
           "CUDA_VISIBLE_DEVICES": ""}
    model = tmp_path / "Llama-3.2-3B-Instruct"  # an (empty) local folder: nothing would be downloaded
    model.mkdir()
    proc = run_cli("run", str(FINETOME), f"load.model={model}", "--output-dir", str(out_dir),
                   env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    line = next(i for i, l in enumerate(FINETOME.read_text().splitlines(), 1) if l.startswith('use = "unsloth"'))
    assert f"llama32_finetome.toml:{line}:1: load.use: {NO_GPU}" in proc.stderr, proc.stderr
    assert "not installed" not in proc.stderr, "the fake unsloth is importable: only the GPU is missing"
    assert not marker.exists(), "preflight must stop before unsloth is imported"
    assert not out_dir.exists(), "no run folder: nothing was started"
    assert "stage load" not in proc.stderr


# ---------------------------------------------------------------- validate: warnings with their lines
def finetome_with(**replace: str) -> str:
    text = FINETOME.read_text()
    for key, value in replace.items():
        lines = text.splitlines()
        i = next(i for i, l in enumerate(lines) if l.split("=")[0].strip() == key)
        lines[i] = f"{key} = {value}"
        text = "\n".join(lines) + "\n"
    return text


def short(problems: list[str]) -> list[str]:
    """Rendered problems with the recipe's folder left out."""
    return [re.sub(r"^\S*/recipe\.toml:", "recipe.toml:", p) for p in problems]


def line_of(text: str, key: str) -> int:
    return next(i for i, l in enumerate(text.splitlines(), 1) if l.split("=")[0].strip() == key)


def test_validate_warns_when_unsloth_fast_lora_kernels_are_off(recipe_problems):
    text = finetome_with(dropout="0.1", bias='"all"')
    text = text.replace("use_rslora = false\n", "use_rslora = false\nuse_dora = true\n")
    problems = short(recipe_problems(text))
    assert problems == [
        f"recipe.toml:{line_of(text, 'dropout')}:1: warning: adapt.dropout: Unsloth's fast LoRA kernels are off with "
        "dropout = 0.1; training still works, more slowly (set adapt.dropout = 0 to keep them)",
        f"recipe.toml:{line_of(text, 'bias')}:1: warning: adapt.bias: Unsloth's fast LoRA kernels are off with "
        'bias = "all"; training still works, more slowly (set adapt.bias = "none" to keep them)',
        f"recipe.toml:{line_of(text, 'use_dora')}:1: warning: adapt.use_dora: Unsloth's fast LoRA kernels are off with "
        "use_dora = true; training still works, more slowly (set adapt.use_dora = false to keep them)",
    ]


def test_validate_warning_from_an_override_names_the_override(recipe_problems):
    problems = recipe_problems(FINETOME.read_text(), overrides=("adapt.dropout=0.05",))
    assert problems == ["<command line>: adapt.dropout=0.05: warning: Unsloth's fast LoRA kernels are off with "
                        "dropout = 0.05; training still works, more slowly (set adapt.dropout = 0 to keep them)"]


def test_no_fast_kernel_warning_on_hf_or_with_the_defaults(recipe_problems):
    assert recipe_problems(FINETOME.read_text()) == []
    text = finetome_with(dropout="0.1", bias='"all"', use='"hf"')
    assert recipe_problems(text) == []


def test_cli_validate_prints_the_warning_and_succeeds(tmp_path):
    path = tmp_path / "r.toml"
    text = finetome_with(dropout="0.1")
    path.write_text(text)
    proc = run_cli("validate", str(path))
    assert proc.returncode == 0, proc.stderr
    assert f"r.toml:{line_of(text, 'dropout')}:1: warning: adapt.dropout: Unsloth's fast LoRA kernels are off" in proc.stderr
    assert "torch" not in proc.stdout


def test_full_finetuning_conflicts(recipe_problems):
    text = FINETOME.read_text().replace("load_in_4bit = true", "load_in_4bit = true\nfull_finetuning = true")
    assert any("full_finetuning trains every weight and cannot train 4-bit ones" in p for p in recipe_problems(text))
    text = FINETOME.read_text().replace("load_in_4bit = true", "load_in_4bit = false\nfull_finetuning = true")
    problems = short(recipe_problems(text))
    assert [p for p in problems if "warning" not in p] == [
        f"recipe.toml:{line_of(text, 'full_finetuning')}:1: load.full_finetuning: full_finetuning trains every weight, "
        "but [adapt] uses 'lora'; remove the [adapt] table or set load.full_finetuning = false"]


# ---------------------------------------------------------------- the shipped recipe
def test_shipped_recipe_uses_unsloth_and_hf_differs_only_by_load_use():
    raw = tomllib.loads(FINETOME.read_text())
    assert raw["load"]["use"] == "unsloth"
    assert 'load.use="hf" runs anywhere' in FINETOME.read_text()
    unsloth = load_recipe(FINETOME)
    hf = load_recipe(FINETOME, ["load.use=hf"])
    assert unsloth.warnings == [] and hf.warnings == []
    a, b = unsloth.resolved(), hf.resolved()
    assert {k for k in a if a[k] != b[k]} == {"load"}
    written = set(raw["load"]) - {"use"}
    assert {k: a["load"][k] for k in written} == {k: b["load"][k] for k in written} == \
        {k: v for k, v in raw["load"].items() if k != "use"}
    shared = (set(a["load"]) & set(b["load"])) - {"use"}
    assert {k: a["load"][k] for k in shared} == {k: b["load"][k] for k in shared}
    assert (a["load"]["use"], b["load"]["use"]) == ("unsloth", "hf")


def test_unsloth_backend_is_registered_through_the_entry_point():
    from importlib import metadata

    eps = {ep.name: ep.value for ep in metadata.entry_points(group="recipetune")}
    assert eps.get("unsloth") == "recipetune_plugins.unsloth_backend"
    pm = get_plugin_manager()
    assert pm.registry.get("backend", "unsloth").cls is UnslothBackend


def test_plugin_import_does_not_import_unsloth_or_torch():
    import subprocess

    code = ("import sys; import recipetune_plugins.unsloth_backend, recipetune_plugins.lora, recipetune_plugins.sft, "
            "recipetune_plugins.samples\n"
            "print([m for m in ('unsloth', 'torch', 'transformers', 'trl', 'peft') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


# ---------------------------------------------------------------- padded or padding-free batches
def test_padding_free_auto_picks_padded_batches_on_unsloth_when_there_is_no_padding():
    from recipetune_plugins.sft import expected_pad_fraction, padding_free_setting

    same = [2048] * 50
    varied = [100 + 37 * i for i in range(50)]
    assert expected_pad_fraction(same, 2) == 0.0 and expected_pad_fraction(varied, 1) == 0.0
    assert expected_pad_fraction(varied, 2) > 0.2
    assert padding_free_setting("auto", "unsloth", same, 2) is False, "nothing to remove: padded + compiled blocks"
    assert padding_free_setting("auto", "unsloth", varied, 1) is False
    assert padding_free_setting("auto", "unsloth", varied, 2) is None, "real padding: Unsloth's own choice"
    assert padding_free_setting("auto", "hf", same, 2) is None
    assert padding_free_setting(True, "hf", same, 2) is True and padding_free_setting(False, "unsloth", varied, 2) is False
