"""PNG plots in the run folder: loss per step and per epoch, learning rate, memory.

Placeholder registered in pyproject.toml; its owner fills it in."""
