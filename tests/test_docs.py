"""The docs stay true: every hook documented with its exact signature, the recipe reference
matches the schema, the README's commands are what CI runs."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from recipetune import hookspecs

HOOKS = {name: fn for name, fn in vars(hookspecs).items() if inspect.isfunction(fn) and hasattr(fn, "recipetune_spec")}


def signature(name: str) -> str:
    return f"{name}{inspect.signature(HOOKS[name])}".replace("'", "")


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_is_documented_with_its_exact_signature(name):
    docs = (ROOT / "docs" / "plugin-hooks.md").read_text()
    assert f"### {name}\n" in docs, f"docs/plugin-hooks.md has no section for {name}"
    assert f"```python\n{signature(name)}\n```" in docs, f"docs/plugin-hooks.md: signature of {name} should read {signature(name)}"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_spec_has_a_docstring_with_its_arguments(name):
    doc = inspect.getdoc(HOOKS[name]) or ""
    assert doc, name
    for arg in inspect.signature(HOOKS[name]).parameters:
        assert f":param {arg}:" in doc, f"{name}: document {arg}"


def test_no_documented_hook_is_missing_from_the_specs():
    docs = (ROOT / "docs" / "plugin-hooks.md").read_text()
    documented = set(re.findall(r"^### (\w+)$", docs, flags=re.M))
    assert documented == set(HOOKS)


def test_recipe_reference_is_generated_from_the_schema():
    env = {**os.environ, "RECIPETUNE_DISABLE_PLUGIN_AUTOLOAD": "1"}
    out = subprocess.run([sys.executable, "-m", "recipetune", "schema", "--markdown"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert (ROOT / "docs" / "recipe-reference.md").read_text() == out, (
        "docs/recipe-reference.md is stale: RECIPETUNE_DISABLE_PLUGIN_AUTOLOAD=1 recipe schema --markdown > docs/recipe-reference.md")


def test_readme_first_screen_has_the_two_setup_commands_and_ci_runs_the_second():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in first_block.splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2
    assert commands[0].endswith("recipe run recipes/quickstart.toml")
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_docs_links_resolve():
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#]+\.md)\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
