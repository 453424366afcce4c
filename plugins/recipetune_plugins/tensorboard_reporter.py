"""Reporter `tensorboard`: the run's scalars as TensorBoard event files.

Placeholder registered in pyproject.toml; its owner fills it in."""
