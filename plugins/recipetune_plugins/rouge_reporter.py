"""Reporter `rouge`: ROUGE of generated answers against the test split's references.

Placeholder registered in pyproject.toml; its owner fills it in."""
