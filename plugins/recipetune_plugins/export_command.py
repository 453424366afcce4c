"""Command `recipe export`: export a finished run's adapter without training.

Placeholder registered in pyproject.toml; its owner fills it in."""
