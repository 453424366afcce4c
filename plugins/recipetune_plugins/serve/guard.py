"""The request guard: an ASGI middleware in front of llama-cpp-python's OpenAI-compatible app.

llama-cpp-python's server does the OpenAI API; what it does not do is answer bad requests well:
malformed JSON and values its models reject come back as 500s, unknown fields are silently dropped,
a negative ``max_tokens`` on a chat means "until the context is full", and a prompt longer than the
context fails *inside* a stream that has already answered 200. This middleware answers all of those
with an OpenAI-style 4xx JSON error (``{"error": {"message", "type", "param", "code"}}``, which the
official ``openai`` client turns into ``BadRequestError`` etc.) before the request reaches the model,
so the model's queue only ever holds requests it can serve. It also checks the API key on every route
but the page and its assets, and fills in ``repeat_penalty = 1.0`` when a request leaves it out (the
OpenAI API has no repeat penalty, and ``recipe generate`` uses none; llama-cpp-python's server
would default to 1.1 and answer differently from ``recipe generate`` for the same sampling).

A plain ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``: the latter interferes with the
disconnect detection a stream needs to free the model when a client goes away.
"""

from __future__ import annotations

import difflib
import hmac
import json
from typing import Any, Awaitable, Callable

import anyio

from .model_file import ServedModel

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES = 16 * 1024 * 1024
PUBLIC_PATHS = ("/", "/favicon.ico")
PUBLIC_PREFIXES = ("/page/",)
"""The chat page and its assets need no key (they hold no data; the page asks for the key)."""


class RequestProblem(Exception):
    """A request the server refuses: HTTP status, message, OpenAI error type/code and the offending field."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind

    def body(self) -> bytes:
        return json.dumps({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                     "code": self.code}}).encode()


def _request_models() -> dict[str, type]:
    from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest

    return {"/v1/chat/completions": CreateChatCompletionRequest, "/v1/completions": CreateCompletionRequest,
            "/v1/engines/copilot-codex/completions": CreateCompletionRequest}


def check_fields(payload: Any, model: type, path: str) -> None:
    """An object of known fields that the library's own request model accepts."""
    from pydantic import ValidationError

    if not isinstance(payload, dict):
        raise RequestProblem(400, f"the body of {path} must be a JSON object, not {type(payload).__name__}",
                             "invalid_body")
    known = set(model.model_fields)
    unknown = sorted(set(payload) - known)
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1)
            hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise RequestProblem(400, f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(hints)} for {path}; "
                                  f"known fields: {', '.join(sorted(known))}", "unknown_field", unknown[0])
    try:
        model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        more = f" (and {exc.error_count() - 1} more problem{'s' if exc.error_count() > 2 else ''})" \
            if exc.error_count() > 1 else ""
        raise RequestProblem(400, f"{where}: {first['msg']}{more}", "invalid_value", where) from None


def check_values(payload: dict[str, Any], path: str) -> None:
    """What the library accepts but serves badly."""
    max_tokens = payload.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise RequestProblem(400, f"max_tokens must be a positive integer or null (until the model stops or the "
                                  f"context is full), not {max_tokens!r}", "invalid_value", "max_tokens")
    temperature = payload.get("temperature")
    if isinstance(temperature, (int, float)) and temperature < 0:
        raise RequestProblem(400, f"temperature must be 0 (greedy) or more, not {temperature}", "invalid_value",
                             "temperature")
    for name in ("n", "best_of"):
        if payload.get(name) not in (None, 1):
            raise RequestProblem(400, f"{name} must be 1: this server returns one choice per request", "invalid_value",
                                 name)
    if path.endswith("/chat/completions"):
        if not payload.get("messages"):
            raise RequestProblem(400, "messages must hold at least one message", "invalid_value", "messages")
    else:
        prompt = payload.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) > 1:
            raise RequestProblem(400, "prompt: one prompt per request (a list of one string is fine)", "invalid_value",
                                 "prompt")


def check_context(payload: dict[str, Any], path: str, model: ServedModel, n_ctx: int) -> None:
    """Refuse a prompt that does not fit the context, before it takes the model's queue."""
    if path.endswith("/chat/completions"):
        if model.chat_template is None:
            raise RequestProblem(400, f"{model.path.name} has no chat template, so it cannot chat; "
                                      "send plain text to /v1/completions", "no_chat_template", "messages")
        try:
            count = model.chat_prompt_tokens(payload["messages"], payload.get("tools"), payload.get("tool_choice"))
        except ValueError as exc:
            raise RequestProblem(400, f"messages: {exc}", "invalid_messages", "messages") from None
        what, param = "the messages (rendered with the model's chat template) are", "messages"
    else:
        prompt = payload.get("prompt", "")
        prompt = (prompt[0] if prompt else "") if isinstance(prompt, list) else prompt
        count, what, param = model.completion_prompt_tokens(prompt), "the prompt is", "prompt"
    if count >= n_ctx:
        raise RequestProblem(400, f"This model's maximum context length is {n_ctx} tokens, and {what} {count} "
                                  f"tokens. Send less, or restart the server with a larger --ctx.",
                             "context_length_exceeded", param)


class RequestGuard:
    """ASGI middleware: API key, then body checks for the generation routes, then the wrapped app."""

    def __init__(self, app: Callable, *, model: ServedModel, n_ctx: int, api_key: str | None):
        self.app, self.model, self.n_ctx, self.api_key = app, model, n_ctx, api_key
        self.routes = _request_models()

    def _authorized(self, scope: Scope) -> bool:
        if not self.api_key:
            return True
        path = scope["path"]
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return True
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            await _send_problem(send, RequestProblem(
                401, "missing or wrong API key: send the header 'Authorization: Bearer KEY' with the key in the "
                     "server's --api-key-env variable", "invalid_api_key", kind="authentication_error"))
            return
        if scope["path"] == "/v1/embeddings":
            await _send_problem(send, RequestProblem(404, "this server does not compute embeddings: recipe serve "
                                                          "serves /v1/chat/completions and /v1/completions",
                                                     "unsupported_route"))
            return
        model_cls = self.routes.get(scope["path"]) if scope["method"] == "POST" else None
        if model_cls is None:
            await self.app(scope, receive, send)
            return
        try:
            body = await _read_body(receive)
            # Tokenizing a long prompt is CPU work: off the event loop, so other streams keep flowing.
            payload = await anyio.to_thread.run_sync(self._checked, body, model_cls, scope["path"])
        except RequestProblem as problem:
            await _send_problem(send, problem)
            return
        except _ClientGone:
            return
        await self.app(_as_checked_json(scope, len(payload)), _replay(payload, receive), send)

    def _checked(self, body: bytes, model_cls: type, path: str) -> bytes:
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestProblem(400, f"the request body is not valid JSON: {exc}", "invalid_json") from None
        check_fields(payload, model_cls, path)
        check_values(payload, path)
        check_context(payload, path, self.model, self.n_ctx)
        payload.setdefault("repeat_penalty", 1.0)
        if not payload.get("model"):
            payload["model"] = self.model.alias  # answers name the model, not the file's path on this machine
        return json.dumps(payload).encode()


class _ClientGone(Exception):
    pass


async def _read_body(receive: Receive) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestProblem(413, f"the request body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB",
                                 "body_too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` that hands the app the checked body once, then the client's own messages (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _as_checked_json(scope: Scope, length: int) -> Scope:
    """The scope of the checked body: JSON of ``length`` bytes (also when the client sent no Content-Type)."""
    headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
    return {**scope, "headers": [*headers, (b"content-length", str(length).encode()),
                                 (b"content-type", b"application/json")]}


async def _send_problem(send: Send, problem: RequestProblem) -> None:
    body = problem.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if problem.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
