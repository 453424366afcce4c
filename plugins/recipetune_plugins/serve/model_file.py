"""What the server tells people about the GGUF it serves, and how many tokens a request's prompt takes.

Both come from a *vocabulary-only* llama.cpp instance of the same file: it loads the tokenizer and the
metadata but no weights, so the request guard can measure prompts while the served model is busy
generating (the served instance is behind llama-cpp-python's lock, one request at a time).
Prompts are rendered with llama-cpp-python's own ``Jinja2ChatFormatter`` built exactly as ``Llama``
builds it from the file, so the count is the count the server will see.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

DEFAULT_MAX_CTX = 4096
"""``--ctx`` default: the model's own context length, at most this (as ``recipe generate``'s default)."""


def quantization_name(file_type: str | int | None) -> str:
    """``general.file_type`` as people write it: ``F32``, ``F16``, ``Q8_0``, ``Q4_K_M`` ..."""
    if file_type is None or file_type == "":
        return "unknown"
    try:
        import gguf

        name = gguf.LlamaFileType(int(file_type)).name
    except (ImportError, ValueError):
        return f"file type {file_type}"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


@dataclass
class ServedModel:
    """The GGUF file being served: identity, quantization, context and chat template."""

    path: Path
    alias: str
    """The id in ``/v1/models`` (the file name without ``.gguf``)."""
    name: str
    """``general.name`` from the file."""
    quantization: str
    trained_context: int | None
    chat_template: str | None
    bos_token: str
    eos_token: str
    eos_id: int
    vocab: Any
    """llama-cpp-python ``Llama`` opened with ``vocab_only=True`` (tokenizer and metadata, no weights)."""

    @classmethod
    def open(cls, path: Path) -> "ServedModel":
        import llama_cpp

        from ..gguf.verify import quiet_native_output

        with quiet_native_output():
            vocab = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        meta = vocab.metadata
        arch = meta.get("general.architecture", "")
        trained = meta.get(f"{arch}.context_length")
        eos_id = vocab.token_eos()
        bos_id = vocab.token_bos()
        return cls(path=path, alias=path.stem, name=meta.get("general.name") or path.stem,
                   quantization=quantization_name(meta.get("general.file_type")),
                   trained_context=int(trained) if trained and trained.isdigit() else None,
                   chat_template=meta.get("tokenizer.chat_template") or None,
                   bos_token=vocab._model.token_get_text(bos_id) if bos_id >= 0 else "",
                   eos_token=vocab._model.token_get_text(eos_id) if eos_id >= 0 else "",
                   eos_id=eos_id, vocab=vocab)

    def default_context(self) -> int:
        return min(self.trained_context or DEFAULT_MAX_CTX, DEFAULT_MAX_CTX)

    def chat_prompt_tokens(self, messages: list[Any], tools: Any = None, tool_choice: Any = None) -> int:
        """Tokens of the prompt llama-cpp-python's chat handler will build from ``messages``.

        Raises ``ValueError`` with the template's own message when the template refuses the
        conversation (``raise_exception`` in the template, e.g. roles that do not alternate)."""
        if self.chat_template is None:
            raise ValueError("this model has no chat template")
        try:
            prompt = self._formatter(messages=messages, tools=tools, tool_choice=tool_choice).prompt
        except ValueError:
            raise
        except Exception as exc:  # a jinja error on a message shape the template does not expect
            raise ValueError(f"the model's chat template cannot render these messages: {exc}") from None
        return len(self.vocab.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))

    @cached_property
    def _formatter(self) -> Any:
        """The formatter ``Llama`` builds from the file's template (compiled once)."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        return Jinja2ChatFormatter(template=self.chat_template or "", eos_token=self.eos_token,
                                   bos_token=self.bos_token, stop_token_ids=[self.eos_id])

    def completion_prompt_tokens(self, prompt: str) -> int:
        """Tokens of a ``/v1/completions`` prompt, tokenized as ``Llama.create_completion`` does."""
        return len(self.vocab.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))

    def info(self, n_ctx: int, threads: int) -> dict[str, Any]:
        """What ``/info`` answers and the page shows."""
        return {"id": self.alias, "name": self.name, "file": self.path.name, "quantization": self.quantization,
                "context_length": n_ctx, "trained_context_length": self.trained_context, "threads": threads,
                "chat_template": self.chat_template is not None}

    def close(self) -> None:
        self.vocab.close()
