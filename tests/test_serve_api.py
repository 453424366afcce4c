"""``recipe serve``: a real server process on 127.0.0.1 serving a tiny GGUF built here, called by the official
``openai`` client and by hand-written requests (good and bad), compared with ``recipe generate``."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("fastapi", reason="recipe serve needs the serve extra: pip install 'recipetune[serve]'")
openai = pytest.importorskip("openai")

from recipetune_plugins.serve.process import ServerProcess  # noqa: E402

PROMPTS = ["Hello!", "What is 2 + 3?", "Tell me about the sea.", "Who are you?", "Count to five.", "Name a colour.",
           "Write a haiku.", "Is it raining?"]


def build_tiny_gguf(folder: Path) -> Path:
    """A tiny Llama (random weights, ChatML template, <|im_end|> stop) written as an F32 GGUF: no training."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipetune.testing import make_tiny_llama
    from recipetune_plugins.gguf.vocab import vocab_metadata
    from recipetune_plugins.gguf.writer import write_gguf

    model_dir = make_tiny_llama(folder / "hf", init_std=0.1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = vocab_metadata(tokenizer, model.get_input_embeddings().weight.shape[0], tokenizer.eos_token)
    return write_gguf(model, vocab, folder / "tiny-f32.gguf", "f32", name="tiny", chat_template=tokenizer.chat_template)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(tiny_gguf):
    # llama-cpp-python's settings would read these from the environment: the server must not.
    with ServerProcess(tiny_gguf, "--threads", "1", env={"API_KEY": "from-the-environment", "N_CTX": "99"}) as proc:
        yield proc
    assert proc.returncode == 0, proc.output


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def request(url: str, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None):
    """(status, parsed JSON or text, headers) of one raw HTTP request."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read().decode()
    conn.close()
    try:
        return response.status, json.loads(data), dict(response.getheaders())
    except json.JSONDecodeError:
        return response.status, data, dict(response.getheaders())


def generate_cli(model: Path, prompt: str, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "recipetune", "generate", str(model), "--prompt", prompt,
                             "--threads", "1", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.removesuffix("\n")


def test_answers_exactly_what_recipe_generate_answers(server, client, tiny_gguf):
    cases = [("What is 2 + 3?", None, ["--temperature", "0"], {"temperature": 0}),
             ("Tell me a story.", "You are a storyteller.", ["--temperature", "0.9", "--seed", "7"],
              {"temperature": 0.9, "top_p": 0.95, "seed": 7})]
    for prompt, system, cli_args, sampling in cases:
        system_args = ["--system", system] if system else []
        expected = generate_cli(tiny_gguf, prompt, "--max-tokens", "24", *system_args, *cli_args)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        answer = client.chat.completions.create(model="tiny-f32", messages=messages, max_tokens=24, **sampling)
        assert answer.choices[0].message.content == expected, (prompt, sampling)
        streamed = client.chat.completions.create(model="tiny-f32", messages=messages, max_tokens=24, stream=True,
                                                  **sampling)
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected
    assert len(expected) > 10  # a real answer, not an empty one that would match anything


def test_the_official_openai_client_works_unchanged(server, client, tiny_gguf):
    assert [m.id for m in client.models.list()] == ["tiny-f32"]
    chat = client.chat.completions.create(model="tiny-f32", messages=[{"role": "user", "content": "Hi"}],
                                          max_tokens=12, temperature=0)
    assert chat.object == "chat.completion" and chat.model == "tiny-f32"
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage.completion_tokens <= 12 and chat.usage.prompt_tokens > 0
    chunks = list(client.chat.completions.create(model="tiny-f32", messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=12, temperature=0, stream=True))
    assert len(chunks) > 3 and chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == chat.choices[0].message.content
    # /v1/completions: the raw prompt, continued as llama-cpp-python itself continues it
    import llama_cpp

    raw = llama_cpp.Llama(str(tiny_gguf), n_ctx=512, n_threads=1, verbose=False)
    expected = raw.create_completion("The quick brown fox", max_tokens=16, temperature=0)["choices"][0]["text"]
    raw.close()
    text = client.completions.create(model="tiny-f32", prompt="The quick brown fox", max_tokens=16, temperature=0)
    assert text.choices[0].text == expected and len(expected) > 0
    streamed = client.completions.create(model="tiny-f32", prompt="The quick brown fox", max_tokens=16, temperature=0,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_settings_never_come_from_the_environment(server):
    status, info, _ = request(server.url, "GET", "/info")  # API_KEY and N_CTX were set for the server process
    assert status == 200, info
    assert info["context_length"] == 512 and info["quantization"] == "F32" and info["name"] == "tiny"
    assert "listening on http://127.0.0.1:" in server.output  # loopback unless told otherwise


BAD_REQUESTS = [
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}', 400, "not valid JSON"),
    ("/v1/chat/completions", '[1, 2]', 400, "must be a JSON object"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "max_tokenz": 4}', 400,
     "did you mean 'max_tokens'"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}', 400,
     "max_tokens must be a positive integer"),
    ("/v1/completions", '{"prompt": "hi", "max_tokens": -1}', 400, "max_tokens"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "temperature": -1}', 400,
     "temperature must be 0"),
    ("/v1/chat/completions", '{"messages": []}', 400, "at least one message"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "top_p": 3}', 400, "top_p"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "n": 2}', 400, "n must be 1"),
    ("/v1/completions", '{"prompt": ["a", "b"]}', 400, "one prompt per request"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "word " * 700}]}), 400,
     "maximum context length is 512 tokens"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "word " * 700}], "stream": True}),
     400, "maximum context length is 512 tokens"),
    ("/v1/completions", json.dumps({"prompt": "word " * 700, "stream": True}), 400, "maximum context length"),
    ("/v1/chat/completions", '{"messages": [{"role": "wizard", "content": "hi"}]}', 400, "messages.0"),
    ("/v1/embeddings", '{"input": "hi"}', 404, "does not compute embeddings"),
]


@pytest.mark.parametrize("path,body,status,phrase", BAD_REQUESTS, ids=[f"{i}-{b[:30]}" for i, (_, b, _, _) in
                                                                        enumerate(BAD_REQUESTS)])
def test_bad_requests_get_a_clear_4xx_json_error_and_the_server_keeps_serving(server, client, path, body, status,
                                                                              phrase):
    got, data, headers = request(server.url, "POST", path, body, {"Content-Type": "application/json"})
    assert got == status, data
    assert headers["content-type"].startswith("application/json")
    assert phrase in data["error"]["message"], data
    assert data["error"]["type"] == "invalid_request_error"
    after = client.chat.completions.create(model="tiny-f32", messages=[{"role": "user", "content": "ok?"}],
                                           max_tokens=4, temperature=0)
    assert after.choices[0].message.content


def test_the_openai_client_sees_a_too_long_prompt_as_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="tiny-f32", messages=[{"role": "user", "content": "word " * 700}],
                                       max_tokens=4, stream=True)
    assert "maximum context length is 512" in str(error.value)


def test_eight_concurrent_streaming_chats_are_queued_and_all_complete(server, client):
    def stream(own, prompt: str) -> tuple[str, str]:
        chunks = list(own.chat.completions.create(model="tiny-f32", messages=[{"role": "user", "content": prompt}],
                                                  max_tokens=40, temperature=0, stream=True))
        return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].choices[0].finish_reason

    expected = {p: stream(client, p) for p in PROMPTS}  # one at a time
    results: dict[str, tuple[str, str]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(PROMPTS))

    def chat(prompt: str) -> None:
        try:
            own = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
            barrier.wait()
            results[prompt] = stream(own, prompt)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=chat, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    assert len(results) == len(PROMPTS)
    for prompt, answer in results.items():
        assert answer == expected[prompt], prompt  # the full answer, not a cut one
    assert all(text for text, _ in results.values())


def test_no_cors_headers_and_a_foreign_host_is_refused(server):
    status, _, headers = request(server.url, "GET", "/v1/models", headers={"Origin": "http://evil.example"})
    assert status == 200 and "access-control-allow-origin" not in {k.lower() for k in headers}
    status, _, _ = request(server.url, "GET", "/v1/models", headers={"Host": "evil.example"})
    assert status == 400  # DNS rebinding: a page on another name cannot reach the loopback server


def test_the_page_and_its_assets_are_served(server):
    status, html, headers = request(server.url, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert 'id="system"' in html and 'id="stop"' in html and "/page/chat.js" in html
    status, script, _ = request(server.url, "GET", "/page/chat.js")
    assert status == 200 and "/v1/chat/completions" in script


def test_api_key_protects_every_api_route(tiny_gguf):
    key = "s3cret-key-123"
    with ServerProcess(tiny_gguf, "--threads", "1", "--api-key-env", "RT_SERVE_KEY", env={"RT_SERVE_KEY": key}) as srv:
        assert key not in srv.output
        routes = [("GET", "/v1/models", None), ("GET", "/info", None), ("GET", "/docs", None),
                  ("GET", "/openapi.json", None), ("POST", "/extras/tokenize", '{"input": "hi"}'),
                  ("POST", "/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}]}'),
                  ("POST", "/v1/completions", '{"prompt": "hi"}')]
        for method, path, body in routes:
            for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}):
                status, data, _ = request(srv.url, method, path, body, auth)
                assert status == 401, (path, auth, data)
                assert data["error"]["code"] == "invalid_api_key" and "--api-key-env" in data["error"]["message"]
        status, _, _ = request(srv.url, "GET", "/")  # the page itself holds nothing; it asks for the key
        assert status == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0)
        assert [m.id for m in good.models.list()] == ["tiny-f32"]
        assert good.chat.completions.create(model="tiny-f32", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=4).choices[0].message.content
    assert srv.returncode == 0 and key not in srv.output


def test_sigterm_shuts_down_cleanly(tiny_gguf):
    srv = ServerProcess(tiny_gguf, "--threads", "1").start()
    status, _, _ = request(srv.url, "GET", "/v1/models")
    assert status == 200
    started = time.monotonic()
    assert srv.stop(signal.SIGTERM) == 0, srv.output
    assert time.monotonic() - started < 15
    assert "recipe serve: stopped" in srv.output and "Traceback" not in srv.output


def run_serve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "recipetune", "serve", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_a_missing_serve_extra_names_the_extra_to_install(tmp_path, tiny_gguf):
    shadow = tmp_path / "shadow" / "fastapi"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('fastapi is not installed (simulated)')\n")
    result = run_serve(str(tiny_gguf), env={"PYTHONPATH": str(shadow.parent)})
    assert result.returncode == 1
    assert 'pip install "recipetune[serve]"' in result.stderr and "fastapi" in result.stderr
    assert "Traceback" not in result.stderr


def test_what_cannot_be_served_is_one_clear_line(tmp_path, tiny_gguf, tiny_model_dir):
    missing = run_serve(str(tmp_path / "nope.gguf"))
    assert missing.returncode == 1 and "not a .gguf file or a folder" in missing.stderr
    hf = run_serve(str(tiny_model_dir))
    assert hf.returncode == 1 and "runs GGUF files" in hf.stderr and "Traceback" not in hf.stderr
    no_key = run_serve(str(tiny_gguf), "--api-key-env", "RT_NOT_SET_ANYWHERE")
    assert no_key.returncode == 1 and "RT_NOT_SET_ANYWHERE" in no_key.stderr
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    bad = run_serve(str(broken), "--port", "0")
    assert bad.returncode == 1 and "cannot load" in bad.stderr and "Traceback" not in bad.stderr


def test_a_port_in_use_is_one_clear_line(tiny_gguf):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_serve(str(tiny_gguf), "--port", str(port))
    assert result.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "--port" in result.stderr and "Traceback" not in result.stderr


def test_a_run_folder_serves_its_most_precise_gguf_or_the_type_asked(tmp_path, tiny_gguf):
    from recipetune_plugins.gguf.quantize import quantize

    run = tmp_path / "run"
    folder = run / "artifacts" / "gguf"
    folder.mkdir(parents=True)
    f32 = folder / "tiny-f32.gguf"
    f32.write_bytes(tiny_gguf.read_bytes())
    q8 = quantize(f32, folder / "tiny-q8_0.gguf", "q8_0", 1)
    artifacts = [{"kind": "gguf", "path": str(q8)}, {"kind": "gguf", "path": str(f32)}]
    (run / "resolved.json").write_text(json.dumps({"artifacts": artifacts}))
    for args, expected in (((), ("tiny-f32", "F32")), (("--type", "q8_0"), ("tiny-q8_0", "Q8_0"))):
        with ServerProcess(run, "--threads", "1", *args) as srv:
            status, info, _ = request(srv.url, "GET", "/info")
            assert status == 200 and (info["id"], info["quantization"]) == expected
