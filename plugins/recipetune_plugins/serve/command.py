"""``recipe serve MODEL``: run the served app (:mod:`.app`) under uvicorn until SIGTERM or Ctrl-C.

MODEL is resolved exactly as ``recipe generate`` resolves it (:func:`recipetune_plugins.inference.resolve_model`):
a ``.gguf`` file, a run folder (its most precise GGUF, or ``--type``), a folder of GGUF files. The
listening socket is opened here, so a port in use is one clear line and ``--port 0`` picks a free port;
the line ``recipe serve: listening on http://HOST:PORT`` is printed once the server accepts requests.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import sys
from pathlib import Path

import click

from recipetune import UserError

SERVER_MODULES = ("fastapi", "uvicorn", "sse_starlette", "starlette_context", "pydantic_settings")
INSTALL_HINT = 'pip install "recipetune[serve]"  (llama-cpp-python with its [server] extra)'
GRACEFUL_SHUTDOWN_S = 5
"""On SIGTERM, streams still running after this many seconds are closed."""


def missing_modules() -> list[str]:
    """The modules ``recipe serve`` needs that this environment lacks (llama_cpp and its server's)."""
    missing = []
    for name in ("llama_cpp", *SERVER_MODULES):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if found and name != "llama_cpp":
            try:  # present but broken (a half-installed package) counts as missing too
                __import__(name)
            except ImportError:
                found = False
        if not found:
            missing.append(name)
    return missing


def resolve_gguf(model: str, gguf_type: str | None) -> Path:
    from ..inference import resolve_model

    ref = resolve_model(model, gguf_type)
    if ref.kind != "gguf":
        raise UserError(f"{model}: recipe serve runs GGUF files through llama.cpp, and this resolves to {ref.kind} "
                        f"weights ({ref.path}); export a GGUF ([[export]] use = \"gguf\" in the recipe) and serve "
                        f"that, or try it in a terminal with `recipe chat {model}`")
    return ref.path


def read_api_key(variable: str | None) -> str | None:
    if variable is None:
        return None
    key = os.environ.get(variable, "").strip()
    if not key:
        raise UserError(f"--api-key-env {variable}: the environment variable {variable} is not set or empty")
    return key


def open_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, reuse_port=False)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                        + ("; pick another port with --port (0 picks a free one)" if exc.errno == 98 else "")) from None


def serve(model: str, gguf_type: str | None, host: str, port: int, api_key_env: str | None, threads: int | None,
          n_ctx: int | None, seed: int | None) -> None:
    """Everything ``recipe serve`` does; returns when the server has shut down."""
    missing = missing_modules()
    if missing:
        raise UserError(f"recipe serve needs {', '.join(missing)}: {INSTALL_HINT}")
    import uvicorn

    from .app import ServeConfig, build_app

    api_key = read_api_key(api_key_env)
    path = resolve_gguf(model, gguf_type)
    config = ServeConfig(model_path=path, host=host, port=port, threads=threads or os.cpu_count() or 1,
                         n_ctx=n_ctx, api_key=api_key, seed=seed)
    sock = open_socket(host, port)
    try:
        app, served, ctx = build_app(config)
    except ValueError as exc:  # llama.cpp could not load the file
        sock.close()
        raise UserError(f"{path}: llama.cpp cannot load this file: {exc}") from None
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        click.echo(f"recipe serve: warning: listening on {host} without --api-key-env: anyone who can reach this "
                   "machine can use the model", err=True)
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host

    def started() -> None:
        click.echo(f"recipe serve: {served.alias} ({served.quantization}, context {ctx}, "
                   f"{config.threads} thread{'s' if config.threads != 1 else ''})"
                   f"{' · API key required' if api_key else ''}", err=True)
        click.echo(f"recipe serve: listening on http://{shown_host}:{bound_port}  (chat page: /, OpenAI API: /v1)",
                   err=True)

    server = _server(uvicorn.Config(app, log_level="warning", access_log=False,
                                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S), started)
    stopped_by: list[int] = []
    # uvicorn re-raises the signal it stopped on once it has shut down; these handlers make that a no-op,
    # so the process leaves through the normal path with status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stopped_by.append(signum))
    server.run(sockets=[sock])
    click.echo("recipe serve: stopped", err=True)


def _server(config, on_started):
    """uvicorn's server, calling ``on_started`` once it accepts connections."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started:
                on_started()

    return Server(config)


def add_serve_command(cli: click.Group) -> None:
    @cli.command("serve")
    @click.argument("model", metavar="MODEL")
    @click.option("--type", "gguf_type", help="Which GGUF of a run folder (q4_k_m, f16 ...). Default: the most precise.")
    @click.option("--host", default="127.0.0.1", show_default=True,
                  help="Address to listen on (0.0.0.0: every interface; then use --api-key-env).")
    @click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port.")
    @click.option("--api-key-env", metavar="VAR",
                  help="Require the key held in environment variable VAR (Authorization: Bearer KEY) on every API route.")
    @click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: all cores).")
    @click.option("--ctx", "n_ctx", type=click.IntRange(min=64), help="Context length (default: the model's, at most 4096).")
    @click.option("--seed", type=int, help="Seed for requests that send none (default: a new one each request).")
    def serve_command(model, gguf_type, host, port, api_key_env, threads, n_ctx, seed):
        """Serve MODEL (a .gguf file or a run folder) on the CPU: a chat page at / and an OpenAI-compatible API at /v1.

        \b
          recipe serve runs/quickstart/<timestamp>
          curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
               -d '{"messages": [{"role": "user", "content": "Hello"}]}'
        """
        try:
            serve(model, gguf_type, host, port, api_key_env, threads, n_ctx, seed)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:  # Ctrl-C while the model was still loading
            click.echo("recipe serve: stopped", err=True)
            sys.exit(130)
        sys.stdout.flush(), sys.stderr.flush()
        # A stream cut at shutdown may leave llama.cpp finishing one token on a worker thread; leaving
        # without interpreter teardown never frees the model under it. Nothing is left to write.
        os._exit(0)
