"""Trainers dpo, orpo, kto on TRL's trainers.

Placeholder registered in pyproject.toml; its owner fills it in."""
