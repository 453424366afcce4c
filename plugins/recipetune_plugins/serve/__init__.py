"""Command `recipe serve`: a GGUF behind an OpenAI-compatible API and a web chat page (llama.cpp on the CPU).

Placeholder registered in pyproject.toml; its owner fills it in."""
