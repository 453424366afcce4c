"""The README's recipe is the shipped quickstart's, and its example command works (issue 15, item 14)."""

from __future__ import annotations

import tomllib

from conftest import ROOT


def _readme_recipe() -> tuple[str, dict]:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## What a recipe looks like", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    return block, tomllib.loads(block)


def _is_part_of(shown, shipped, where: str = "") -> None:
    if isinstance(shown, dict):
        assert isinstance(shipped, dict), where
        for key, value in shown.items():
            assert key in shipped, f"{where}.{key} is not in recipes/quickstart.toml"
            _is_part_of(value, shipped[key], f"{where}.{key}")
    elif isinstance(shown, list) and shown and isinstance(shown[0], dict):
        assert len(shown) == len(shipped), f"{where}: the README shows {len(shown)} tables, the recipe has {len(shipped)}"
        for i, (a, b) in enumerate(zip(shown, shipped)):
            _is_part_of(a, b, f"{where}[{i}]")
    else:
        assert shown == shipped, f"{where}: README says {shown!r}, recipes/quickstart.toml says {shipped!r}"


def test_the_readme_recipe_is_the_shipped_quickstart():
    _, shown = _readme_recipe()
    shipped = tomllib.loads((ROOT / "recipes" / "quickstart.toml").read_text())
    _is_part_of(shown, shipped)


def test_the_readme_example_command_validates(cli):
    block, _ = _readme_recipe()
    command = block.splitlines()[0].lstrip("# ").split("  ")[0].split()
    assert command[:3] == ["recipe", "run", "recipes/quickstart.toml"]
    result = cli("validate", *command[2:], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "10 steps" in result.stdout
