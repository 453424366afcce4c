"""Command `recipe plan`: parameters, memory by part, fit and time before anything is loaded.

Placeholder registered in pyproject.toml; its owner fills it in."""
