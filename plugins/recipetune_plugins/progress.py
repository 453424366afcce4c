"""Progress bar with ETA, loss and tokens/s while training.

Placeholder registered in pyproject.toml; its owner fills it in."""
