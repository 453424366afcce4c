"""Plugin manager and registry: duplicates refused, hooks checked, env switches."""

from __future__ import annotations

import pluggy
import pytest

from recipetune import DatasetFormat, hookimpl
from recipetune.plugins import get_plugin_manager
from recipetune.registry import RegistryError


def plugin_with(**hooks):
    """A plugin object (hashable, as pluggy needs) with the given hook functions."""
    return type("Plugin", (), {name: staticmethod(hookimpl(fn)) for name, fn in hooks.items()})()


class _Shadow(DatasetFormat):
    name = "sharegpt"


def test_duplicate_component_name_names_both_plugins(register_plugin):
    plugin = plugin_with(register_dataset_formats=lambda register: register(_Shadow))
    pm = register_plugin(plugin, "shadowing-plugin")
    with pytest.raises(RegistryError) as info:
        pm.registry
    assert "dataset format 'sharegpt' is registered twice" in str(info.value)
    assert "by plugin sharegpt" in str(info.value) and "by plugin shadowing-plugin" in str(info.value)


def test_registering_a_non_component_is_refused(register_plugin):
    plugin = plugin_with(register_trainers=lambda register: register(dict))
    with pytest.raises(RegistryError, match="not a subclass of recipetune.Trainer"):
        register_plugin(plugin, "bad").registry


def test_misspelled_hook_is_an_error():
    plugin = plugin_with(register_trainer=lambda register: None)
    with pytest.raises(pluggy.PluginValidationError, match="register_trainer"):
        get_plugin_manager(extra_plugins=[(plugin, "typo")])


def test_builtins_and_third_party_plugin_are_found(recipetune_pm):
    registry = recipetune_pm.registry
    assert {"hf"} <= set(registry.names("backend"))
    assert {"lora", "merged"} <= set(registry.names("exporter"))
    assert "qa" in registry.names("dataset_format"), "tests/third_party_plugin must be installed (see README)"
    assert recipetune_pm.info["qa"].distribution == "recipetune-qa"


def test_autoload_switch_keeps_only_the_core_distribution(monkeypatch):
    monkeypatch.setenv("RECIPETUNE_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = get_plugin_manager()
    assert "qa" not in pm.registry.names("dataset_format")
    assert "sharegpt" in pm.registry.names("dataset_format")


def test_trace_switch_prints_hook_calls(cli, tmp_path):
    result = cli("plugins", env={"RECIPETUNE_TRACE": "1"})
    assert result.returncode == 0
    assert "register_commands" in result.stderr


def test_third_party_component_used_by_a_recipe(recipe_problems, tmp_path):
    from recipetune import load_recipe_text

    text = f'''
name = "qa"
[load]
use = "hf"
model = "org/m"
[format]
dataset = "org/d"
standardizer = {{ use = "qa", question = "question" }}
[train]
use = "sft"
'''
    recipe = load_recipe_text(text, recipe_dir=tmp_path)
    fmt = recipe.standardizer.component
    assert fmt.standardize({"question": "Why?", "a": "Because.", "context": "Be brief."}) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "Because."}]
    assert fmt.standardize({"question": "", "a": "x"}) is None
    [problem] = recipe_problems(text.replace('question = "question"', 'questoin = "question"'))
    assert 'format.standardizer.questoin: unknown key for dataset format "qa"; did you mean "question"?' in problem
