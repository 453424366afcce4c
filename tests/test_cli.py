"""The ``recipe`` command line: fast answers without torch, plugins, schema, version."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

from conftest import RECIPES

import recipetune


def test_help_and_validate_do_not_import_torch(tmp_path):
    quick = [r for r in RECIPES if r.name == "quickstart.toml"][0]
    code = (
        "import sys\n"
        "from recipetune.cli import main\n"
        "for args in (['--help'], ['validate', sys.argv[1]], ['plugins']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, (args, e.code)\n"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets', 'llama_cpp', 'unsloth') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(quick)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_version(cli):
    result = cli("--version")
    assert result.returncode == 0 and recipetune.__version__ in result.stdout


def test_plugins_json_lists_components_and_versions(cli):
    result = cli("plugins", "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["hf"]["components"] == {"backend": ["hf"]}
    assert rows["hf"]["version"] == recipetune.__version__
    assert rows["qa"]["distribution"] == "recipetune-qa" and rows["qa"]["components"] == {"dataset_format": ["qa"]}
    assert "register_backends" in rows["hf"]["hooks"]


def test_schema_covers_installed_components(cli):
    schema = json.loads(cli("schema").stdout)
    backends = {c["properties"]["use"]["const"] for c in schema["properties"]["load"]["oneOf"]}
    assert "hf" in backends
    sft = [c for c in schema["properties"]["train"]["oneOf"] if c["properties"]["use"]["const"] == "sft"][0]
    assert sft["properties"]["learning_rate"]["default"] == 2e-4
    assert "Peak learning rate" in sft["properties"]["learning_rate"]["description"]
    assert sft["additionalProperties"] is False


def test_validate_prints_the_plan(cli):
    quick = [r for r in RECIPES if r.name == "quickstart.toml"][0]
    result = cli("validate", str(quick))
    assert result.returncode == 0, result.stderr
    train = tomllib.loads(quick.read_text())["train"]  # the quickstart is retuned now and then
    steps, batch = train["max_steps"], train["per_device_train_batch_size"]
    accumulation = train["gradient_accumulation_steps"]
    assert f"{steps} steps, batch {batch} x {accumulation} accumulation" in result.stdout
    assert result.stdout.strip().endswith("quickstart.toml: ok")


def test_validate_json_has_every_default(cli):
    quick = [r for r in RECIPES if r.name == "quickstart.toml"][0]
    resolved = json.loads(cli("validate", str(quick), "--json", "train.max_steps=3").stdout)
    assert resolved["train"]["max_steps"] == 3
    assert resolved["train"]["max_grad_norm"] == 1.0  # a default the recipe does not write
    assert resolved["adapt"]["use_rslora"] is False
