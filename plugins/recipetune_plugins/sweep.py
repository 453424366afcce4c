"""Command `recipe sweep`: one run per combination of a grid, resumably, with a comparison.

Placeholder registered in pyproject.toml; its owner fills it in."""
