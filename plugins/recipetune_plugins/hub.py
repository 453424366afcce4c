"""Exporter `hub` and `recipe push`: upload a run's artifacts to the Hugging Face Hub.

Placeholder registered in pyproject.toml; its owner fills it in."""
