"""Preference data (prompt/chosen/rejected, KTO completion/label) as a dataset format.

Placeholder registered in pyproject.toml; its owner fills it in."""
