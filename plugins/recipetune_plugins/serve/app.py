"""The served app: llama-cpp-python's own OpenAI-compatible FastAPI app, plus the chat page and a guard.

``llama_cpp.server.app.create_app`` gives ``/v1/models``, ``/v1/chat/completions`` and
``/v1/completions`` (streaming through sse-starlette), the GGUF's embedded chat template and its stop
tokens, and one model instance behind a lock (requests queue; ``interrupt_requests`` is off so a
waiting request never cuts a running stream short). recipetune adds:

* the request guard (:mod:`.guard`): API key on every route but the page, clear 4xx errors;
* ``/info`` (model name, quantization, context length) and the chat page at ``/`` (:mod:`.page`);
* safe defaults: no CORS headers (the page is same-origin; llama-cpp-python allows every origin, which
  would let any web site a user visits drive a local model), a Host check against DNS rebinding when
  bound to loopback, and settings built from explicit values only (llama-cpp-python's settings classes
  otherwise read ``API_KEY``, ``N_CTX``, ``CONFIG_FILE`` ... from the environment).

The page is a static HTML/JS page served by this same app rather than Gradio: Gradio would be a second
web server and ~100 MB of dependencies for one chat box, and could not share this app's queue, key
check and OpenAI routes; the page is a client of the same ``/v1/chat/completions`` any client uses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .model_file import ServedModel

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass
class ServeConfig:
    """What ``recipe serve`` was asked for."""

    model_path: Path
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int = 1
    n_ctx: int | None = None
    """Context length; ``None``: the model's own, at most 4096."""
    api_key: str | None = None
    seed: int | None = None
    """Seed for requests that give none (``None``: a random one each time, as OpenAI does)."""


def model_settings(config: ServeConfig, model: ServedModel, n_ctx: int) -> Any:
    """llama-cpp-python's ``ModelSettings`` from explicit values and the library's defaults, never the environment."""
    from llama_cpp.server.settings import ModelSettings

    values = {"model": str(config.model_path), "model_alias": model.alias, "n_ctx": n_ctx, "n_gpu_layers": 0,
              "n_threads": config.threads, "n_threads_batch": config.threads, "logits_all": False, "verbose": False,
              # the template embedded in the file, never a built-in format guessed from it
              "chat_format": "chat_template.default" if model.chat_template else None}
    if config.seed is not None:
        values["seed"] = config.seed
    return ModelSettings.model_construct(**values)


def server_settings(config: ServeConfig) -> Any:
    from llama_cpp.server.settings import ServerSettings

    return ServerSettings.model_construct(host=config.host, port=config.port, api_key=config.api_key,
                                          interrupt_requests=False)


def build_app(config: ServeConfig, model: ServedModel | None = None) -> tuple[Any, ServedModel, int]:
    """The FastAPI app serving ``config.model_path``, the served model's description, and the context length."""
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware
    from llama_cpp.server.app import create_app
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from ..gguf.verify import _model_params, quiet_native_output, use_extra_buffers
    from .guard import RequestGuard
    from .page import add_page_routes

    model = model or ServedModel.open(config.model_path)
    n_ctx = config.n_ctx or model.default_context()
    os.environ.pop("CONFIG_FILE", None)  # create_app would replace our settings with that file's
    with quiet_native_output(), _model_params(use_extra_buffers()):
        app: FastAPI = create_app(server_settings=server_settings(config),
                                  model_settings=[model_settings(config, model, n_ctx)])
    app.title = f"recipe serve: {model.alias}"
    app.user_middleware = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    add_page_routes(app, model.info(n_ctx, config.threads))
    app.add_middleware(RequestGuard, model=model, n_ctx=n_ctx, api_key=config.api_key)
    if config.host in LOOPBACK:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1"])
    return app, model, n_ctx
