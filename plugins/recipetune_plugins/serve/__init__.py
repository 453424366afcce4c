"""Command ``recipe serve``: a GGUF behind an OpenAI-compatible API and a web chat page (llama.cpp on the CPU).

Modules: :mod:`.command` (the command, uvicorn), :mod:`.app` (llama-cpp-python's server app plus ours),
:mod:`.guard` (API key and request checks), :mod:`.page` and ``page/`` (the chat page),
:mod:`.model_file` (what is served, prompt token counts), :mod:`.process` (a server in a subprocess,
for tests and benchmarks). Only click is imported until the command runs.
"""

from __future__ import annotations

from recipetune import hookimpl


@hookimpl
def register_commands(cli):
    from .command import add_serve_command

    add_serve_command(cli)
