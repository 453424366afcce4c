"""Render, tokenize and mask conversations, in several processes.

Each worker renders its chunk of conversations with the chat template, finds
the assistant spans, tokenizes the chunk in one batch call of the fast
tokenizer (with character offsets) and turns spans into labels with NumPy.
Chunks come back in order as flat ``int32`` arrays (cheap to send between
processes), with the reason each dropped conversation was dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .samples import IGNORE, SampleTable
from .templating import Span, assistant_spans, render

CHUNK = 256
"""Conversations per task sent to a worker."""
MIN_PARALLEL = 2000
"""Below this many conversations one process is faster than starting workers."""
TEXT_ROLE = "text"


@dataclass(frozen=True)
class EncodeSettings:
    template: str
    variables: dict[str, Any]
    train_on: str  # "assistant" or "all"
    max_len: int
    too_long: str  # "truncate" or "drop"
    stop: str | None = None  # the stop token: an assistant span ends with it


@dataclass
class Encoded:
    table: SampleTable
    kept_index: list[int]
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    truncated: int = 0


def _render(settings: EncodeSettings, messages: list[dict[str, Any]]) -> tuple[str, list | None]:
    """The text and the spans trained on (``None``: every token)."""
    if messages and messages[0].get("role") == TEXT_ROLE:
        text = messages[0]["content"]
        if messages[0].get("add_eos", True):
            text += settings.variables.get("eos_token", "")
        return text, None
    if settings.train_on == "all":
        return render(settings.template, messages, **settings.variables), None
    text, spans = assistant_spans(settings.template, messages, **settings.variables)
    return text, _end_at_stop(text, spans, settings.stop)


def _end_at_stop(text: str, spans: list[Span], stop: str | None) -> list[Span]:
    """End each assistant span with its (last) stop token: what the template writes after it (ChatML's and
    Gemma's newline, Phi-3's final ``<|endoftext|>``) is not part of the answer and is not trained."""
    if not stop:
        return spans
    out = []
    for span in spans:
        at = text.rfind(stop, span.start, span.end)
        out.append(Span(span.start, at + len(stop), span.exact) if at >= 0 else span)
    return out


def _backend(tokenizer: Any):
    """The Rust tokenizer without truncation or padding, or ``None`` for a slow tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None:
        return None
    if backend.truncation is not None or backend.padding is not None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    return backend


def _tokenize(tokenizer: Any, backend: Any, texts: list[str]) -> list[tuple[list[int], np.ndarray]]:
    """Token ids and (start, end) character offsets of each text (no special tokens added)."""
    if backend is not None:
        out = []
        for enc in backend.encode_batch(texts, add_special_tokens=False):
            out.append((enc.ids, np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)))
        return out
    out = []
    for text in texts:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        out.append((list(enc["input_ids"]), np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)))
    return out


def _labels(ids: np.ndarray, offsets: np.ndarray, spans: list | None) -> np.ndarray:
    if spans is None:
        return ids.copy()
    starts, ends = offsets[:, 0], offsets[:, 1]
    keep = np.zeros(len(ids), dtype=bool)
    for span in spans:
        a, b, exact = span[0], span[1], (span[2] if len(span) > 2 else True)
        inside = (starts >= a) & (starts < b)
        if not exact:
            inside &= ends <= b
        keep |= inside
    return np.where(keep, ids, IGNORE).astype(np.int32)


def encode_chunk(tokenizer: Any, settings: EncodeSettings, conversations: list[list[dict[str, Any]]],
                 backend: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str | None], dict[str, str], int]:
    """Encode conversations; returns ids, labels, lengths, texts (kept ones), a status per conversation
    (``None`` kept, else the reason it was dropped), one example text per reason, and how many were truncated."""
    from jinja2 import TemplateError

    texts: list[str] = []
    spans: list[list | None] = []
    status: list[str | None] = [None] * len(conversations)
    examples: dict[str, str] = {}
    rendered_at: list[int] = []
    for i, messages in enumerate(conversations):
        try:
            text, sp = _render(settings, messages)
        except (TemplateError, ValueError, TypeError, KeyError) as exc:
            status[i] = "template_error"
            examples.setdefault("template_error", f"{type(exc).__name__}: {exc}\n{messages!r}"[:600])
            continue
        texts.append(text)
        spans.append(sp)
        rendered_at.append(i)
    ids_out, labels_out, lengths, kept_texts = [], [], [], []
    truncated = 0
    for (ids, offsets), sp, text, i in zip(_tokenize(tokenizer, backend, texts), spans, texts, rendered_at):
        arr = np.asarray(ids, dtype=np.int32)
        labels = _labels(arr, offsets, sp)
        if len(arr) > settings.max_len:
            if settings.too_long == "drop":
                status[i] = "too_long"
                examples.setdefault("too_long", text)
                continue
            arr, labels = arr[: settings.max_len], labels[: settings.max_len]
            truncated += 1
        if not (labels != IGNORE).any():
            status[i] = "no_trained_tokens"
            examples.setdefault("no_trained_tokens", text)
            continue
        ids_out.append(arr)
        labels_out.append(labels)
        lengths.append(len(arr))
        kept_texts.append(text)
    cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int32))
    return (cat(ids_out), cat(labels_out), np.asarray(lengths, dtype=np.int64), kept_texts, status, examples, truncated)


def encode_one(tokenizer: Any, settings: EncodeSettings, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """One conversation as the trainer sees it (kept even when it has no trained token)."""
    text, sp = _render(settings, messages)
    ((ids, offsets),) = _tokenize(tokenizer, _backend(tokenizer), [text])
    arr = np.asarray(ids, dtype=np.int32)
    labels = _labels(arr, offsets, sp)[: settings.max_len]
    arr = arr[: settings.max_len]
    return {"input_ids": arr.tolist(), "attention_mask": [1] * len(arr), "labels": labels.tolist(), "text": text}


# ---------------------------------------------------------------- workers
_STATE: dict[str, Any] = {}


def _init_worker(tokenizer: Any, settings: EncodeSettings) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _STATE["tokenizer"] = tokenizer
    _STATE["settings"] = settings
    _STATE["backend"] = _backend(tokenizer)


def _work(chunk: list[list[dict[str, Any]]]):
    return encode_chunk(_STATE["tokenizer"], _STATE["settings"], chunk, _STATE["backend"])


def encode_conversations(tokenizer: Any, settings: EncodeSettings, conversations: list[list[dict[str, Any]]],
                         num_proc: int = 1, progress: bool = False) -> Encoded:
    """Encode every conversation, in ``num_proc`` processes when there are many; order is kept."""
    chunks = [conversations[i:i + CHUNK] for i in range(0, len(conversations), CHUNK)]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(conversations), desc="format", unit="conv", disable=not progress, mininterval=0.5)
    results = []
    if num_proc > 1 and len(conversations) >= MIN_PARALLEL:
        import multiprocessing as mp

        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(method)
        previous = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # no Rust thread pool across fork
        try:
            with ctx.Pool(num_proc, initializer=_init_worker, initargs=(tokenizer, settings)) as pool:
                for result, chunk in zip(pool.imap(_work, chunks), chunks):
                    results.append(result)
                    bar.update(len(chunk))
        finally:
            if previous is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = previous
    else:
        backend = _backend(tokenizer)
        for chunk in chunks:
            results.append(encode_chunk(tokenizer, settings, chunk, backend))
            bar.update(len(chunk))
    bar.close()

    parts, kept_index, dropped, examples, truncated = [], [], {}, {}, 0
    base = 0
    for ids, labels, lengths, texts, status, ex, trunc in results:
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        parts.append(SampleTable(ids, labels, offsets, texts))
        for j, reason in enumerate(status):
            if reason is None:
                kept_index.append(base + j)
            else:
                dropped[reason] = dropped.get(reason, 0) + 1
        for reason, text in ex.items():
            examples.setdefault(reason, text)
        truncated += trunc
        base += len(status)
    return Encoded(SampleTable.concat(parts), kept_index, dropped, examples, truncated)
