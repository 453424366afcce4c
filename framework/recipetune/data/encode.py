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


class WithTools(list):
    """A conversation (a list of messages) whose row defines tools: the template renders it with ``tools=``."""

    def __init__(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]):
        super().__init__(messages)
        self.tools = tools

    def __reduce__(self):
        return (WithTools, (list(self), self.tools))


def _render(settings: EncodeSettings, messages: list[dict[str, Any]]) -> tuple[str, list | None]:
    """The text and the spans trained on (``None``: every token)."""
    if messages and messages[0].get("role") == TEXT_ROLE:
        text = messages[0]["content"]
        if messages[0].get("add_eos", True):
            text += settings.variables.get("eos_token", "")
        return text, None
    tools = getattr(messages, "tools", None)
    variables = settings.variables if tools is None else {**settings.variables, "tools": tools}
    if settings.train_on == "all":
        return render(settings.template, messages, **variables), None
    text, spans = assistant_spans(settings.template, messages, **variables)
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
    """The labels: a token is trained when it starts inside a span (and, for a span that is not
    ``exact``, ends inside it too)."""
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


def _first_from(enc: Any, pos: int, n: int) -> int | None:
    """Index of the first token whose start offset is ``>= pos`` (``n`` when none), by bisection over
    the token offsets (they never decrease); ``None`` when a token has no offsets."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        chars = enc.token_to_chars(mid)
        if chars is None:
            return None
        if chars[0] < pos:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _span_labels(enc: Any, ids: np.ndarray, spans: list) -> np.ndarray | None:
    """:func:`_labels` from a Rust ``Encoding`` without building every token's offsets: each span's first
    and last token are found by bisection. ``None`` when that cannot be done (then the offsets are used)."""
    n = len(ids)
    labels = np.full(n, IGNORE, dtype=np.int32)
    for span in spans:
        a, b, exact = span[0], span[1], (span[2] if len(span) > 2 else True)
        i, j = _first_from(enc, a, n), _first_from(enc, b, n)
        if i is None or j is None:
            return None
        if not exact:
            while j > i and enc.token_to_chars(j - 1)[1] > b:
                j -= 1
        if j > i:
            labels[i:j] = ids[i:j]
    return labels


_BYTE_LEVEL_PRE = {"Sequence", "ByteLevel", "Split", "Digits"}


def byte_lengths(backend: Any) -> np.ndarray | None:
    """For a byte-level BPE tokenizer whose tokens spell the text exactly (no normalizer, no added prefix
    space, every token a run of the text's bytes): the length in bytes of each token id, so that token
    offsets are a cumulative sum and the tokenizer need not track them. ``None`` for any other tokenizer."""
    import json

    try:
        config = json.loads(backend.to_str())
    except Exception:  # pragma: no cover - a tokenizer that cannot serialise itself
        return None
    pre = config.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if (config.get("normalizer") is not None or (config.get("model") or {}).get("type") != "BPE"
            or not any(p.get("type") == "ByteLevel" for p in parts)
            or any(p.get("type") not in _BYTE_LEVEL_PRE or p.get("add_prefix_space") for p in parts)):
        return None
    from tokenizers import pre_tokenizers

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    added = backend.get_added_tokens_decoder()
    lengths = np.zeros(backend.get_vocab_size(with_added_tokens=True), dtype=np.int64)
    for token, i in backend.get_vocab(with_added_tokens=False).items():
        if i not in added:
            if not alphabet.issuperset(token):
                return None
            lengths[i] = len(token)  # one character of the byte-level alphabet per byte
    for i, token in added.items():
        lengths[i] = len(token.content.encode("utf-8"))
    return lengths


def _byte_span_labels(text: str, ids: np.ndarray, lengths: np.ndarray, spans: list) -> np.ndarray | None:
    """:func:`_labels` from token byte lengths (see :func:`byte_lengths`); ``None`` when the tokens do not
    spell the text byte for byte (then the tokenizer's own offsets are used)."""
    size = lengths[ids]
    ends = np.cumsum(size)
    data = text.encode("utf-8")
    if len(ids) and int(ends[-1]) != len(data) or not len(ids) and data:
        return None
    starts = ends - size
    ascii_text = len(data) == len(text)
    labels = np.full(len(ids), IGNORE, dtype=np.int32)
    for span in spans:
        a, b, exact = span[0], span[1], (span[2] if len(span) > 2 else True)
        if not ascii_text:  # character positions -> byte positions
            a, b = len(text[:a].encode("utf-8")), len(text[:b].encode("utf-8"))
        i, j = int(np.searchsorted(starts, a, "left")), int(np.searchsorted(starts, b, "left"))
        if not exact:
            while j > i and ends[j - 1] > b:
                j -= 1
        if j > i:
            labels[i:j] = ids[i:j]
    return labels


class FastBPEMismatch(Exception):
    """The fast BPE engine gave other ids than the tokenizer for a checked text: the stage starts again without it."""


def _fast_ids(fast: Any, backend: Any, texts: list[str]) -> list[np.ndarray]:
    """Token ids from the fast engine (:mod:`.fast_bpe`), the tokenizer's own for texts it leaves to it; the first,
    the last and two texts between (1.6 % of a chunk of 256) are checked against the tokenizer (raises
    :class:`FastBPEMismatch`)."""
    ids = [fast.encode(text) for text in texts]
    n = len(texts)
    checked = sorted({0, n // 3, (2 * n) // 3, n - 1}) if texts else []
    if not fast.agrees(backend, [texts[k] for k in checked], [ids[k] for k in checked]):
        raise FastBPEMismatch()
    missing = [k for k, arr in enumerate(ids) if arr is None]
    if missing:
        for k, enc in zip(missing, backend.encode_batch_fast([texts[k] for k in missing], add_special_tokens=False)):
            ids[k] = np.array(enc.ids, dtype=np.int32)
    return ids  # type: ignore[return-value]


def _encode(tokenizer: Any, backend: Any, texts: list[str], spans: list[list | None],
            lengths: np.ndarray | None = None, fast: Any = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Token ids and labels of each text, from one batch call of the fast tokenizer.

    A byte-level BPE tokenizer (``lengths`` from :func:`byte_lengths`) encodes without tracking offsets
    (about a third faster), or through ``fast`` (:mod:`.fast_bpe`, about five times faster, checked), and the
    spans become labels through the tokens' byte lengths; any other fast tokenizer gives its offsets, read by
    bisection at the span edges only (building every token's offsets as Python tuples costs as much as the
    BPE); a slow tokenizer gives all its offsets.
    """
    if backend is None:
        return [(arr := np.asarray(ids, dtype=np.int32), _labels(arr, offsets, sp))
                for (ids, offsets), sp in zip(_tokenize(tokenizer, None, texts), spans)]
    if fast is not None and lengths is not None:
        out_fast: list = []
        retry_fast: list[int] = []
        for k, (ids, sp, text) in enumerate(zip(_fast_ids(fast, backend, texts), spans, texts)):
            labels = ids.copy() if sp is None else _byte_span_labels(text, ids, lengths, sp)
            if labels is None:  # tokens that do not spell the text (a byte without a token): use the offsets
                retry_fast.append(k)
            out_fast.append((ids, labels))
        if retry_fast:
            again = _encode(tokenizer, backend, [texts[k] for k in retry_fast], [spans[k] for k in retry_fast], None)
            for k, pair in zip(retry_fast, again):
                out_fast[k] = pair
        return out_fast
    fast = hasattr(backend, "encode_batch_fast") and (lengths is not None or all(sp is None for sp in spans))
    out: list = []
    retry: list[int] = []
    encodings = backend.encode_batch_fast(texts, add_special_tokens=False) if fast else \
        backend.encode_batch(texts, add_special_tokens=False)
    for k, (enc, sp, text) in enumerate(zip(encodings, spans, texts)):
        ids = np.array(enc.ids, dtype=np.int32)
        if sp is None:
            labels = ids.copy()
        elif fast:
            labels = _byte_span_labels(text, ids, lengths, sp)  # type: ignore[arg-type]
        else:
            labels = _span_labels(enc, ids, sp)
            if labels is None:
                labels = _labels(ids, np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2), sp)
        if labels is None:
            retry.append(k)
        out.append((ids, labels))
    if retry:  # tokens that do not spell their text (a token that strips spaces...): ask for the offsets
        again = _encode(tokenizer, backend, [texts[k] for k in retry], [spans[k] for k in retry], None)
        for k, pair in zip(retry, again):
            out[k] = pair
    return out


def encode_chunk(tokenizer: Any, settings: EncodeSettings, conversations: list[list[dict[str, Any]]],
                 backend: Any = None, byte_lens: np.ndarray | None = None, fast: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str | None], dict[str, str], int]:
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
    for (arr, labels), text, i in zip(_encode(tokenizer, backend, texts, spans, byte_lens, fast), texts, rendered_at):
        cut = len(arr) > settings.max_len
        if cut:
            if settings.too_long == "drop":
                status[i] = "too_long"
                examples.setdefault("too_long", text)
                continue
            arr, labels = arr[: settings.max_len], labels[: settings.max_len]
        if not (labels != IGNORE).any():
            status[i] = "no_trained_tokens"
            examples.setdefault("no_trained_tokens", text)
            continue
        truncated += cut  # samples kept after being cut (a dropped one is counted as dropped only)
        ids_out.append(arr)
        labels_out.append(labels)
        lengths.append(len(arr))
        kept_texts.append(text)
    cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int32))
    return (cat(ids_out), cat(labels_out), np.asarray(lengths, dtype=np.int64), kept_texts, status, examples, truncated)


def encode_one(tokenizer: Any, settings: EncodeSettings, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """One conversation as the trainer sees it (kept even when it has no trained token)."""
    text, sp = _render(settings, messages)
    ((arr, labels),) = _encode(tokenizer, _backend(tokenizer), [text], [sp])
    arr, labels = arr[: settings.max_len], labels[: settings.max_len]
    return {"input_ids": arr.tolist(), "attention_mask": [1] * len(arr), "labels": labels.tolist(), "text": text}


# ---------------------------------------------------------------- workers
_STATE: dict[str, Any] = {}


FAST_BPE_VARIABLE = "RECIPETUNE_FAST_BPE"


def _engines(tokenizer: Any, use_fast: bool) -> tuple[Any, np.ndarray | None, Any]:
    """The Rust tokenizer, its tokens' byte lengths (byte-level BPE) and the fast BPE engine (or ``None``s)."""
    backend = _backend(tokenizer)
    lengths = byte_lengths(backend) if backend is not None else None
    fast = None
    if use_fast and lengths is not None and os.environ.get(FAST_BPE_VARIABLE, "1") != "0":
        from .fast_bpe import fast_encoder

        fast = fast_encoder(backend)
    return backend, lengths, fast


def _init_worker(tokenizer: Any, settings: EncodeSettings, use_fast: bool = True) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _STATE["tokenizer"] = tokenizer
    _STATE["settings"] = settings
    _STATE["backend"], _STATE["lengths"], _STATE["fast"] = _engines(tokenizer, use_fast)


def _off_main_thread(fn, *args):
    """Run ``fn(*args)`` on a thread of its own. The Rust tokenizer allocates through malloc, and on the
    main thread of a process holding every row read (a forked worker, or one process doing it all) the same
    batch encodes about twice as slowly as on a fresh thread with its own malloc arena."""
    import threading

    out: list = []

    def target():
        try:
            out.append((True, fn(*args)))
        except BaseException as exc:  # re-raised on the calling thread
            out.append((False, exc))

    thread = threading.Thread(target=target, name="recipetune-encode")
    thread.start()
    thread.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value


def _work(chunk):
    """Encode a chunk: a ``(start, end)`` range of the conversations a forked worker inherited, or the
    conversations themselves (``spawn``)."""
    if isinstance(chunk, tuple):
        chunk = _INHERITED[chunk[0]:chunk[1]]
    return _off_main_thread(encode_chunk, _STATE["tokenizer"], _STATE["settings"], chunk, _STATE["backend"],
                            _STATE["lengths"], _STATE["fast"])


_INHERITED: list = []
"""The conversations, set before the workers fork: they get them without pickling."""


def encode_conversations(tokenizer: Any, settings: EncodeSettings, conversations: list[list[dict[str, Any]]],
                         num_proc: int = 1, progress: bool = False, use_fast: bool = True) -> Encoded:
    """Encode every conversation, in ``num_proc`` processes when there are many; order is kept.

    ``use_fast``: let a byte-level BPE tokenizer run through :mod:`.fast_bpe`; when a checked text gets other ids
    than the tokenizer gives it, everything is encoded again by the tokenizer alone (and a warning says so)."""
    try:
        return _encode_conversations(tokenizer, settings, conversations, num_proc, progress, use_fast)
    except FastBPEMismatch:
        import logging

        logging.getLogger("recipetune").warning(
            "format: the fast BPE engine disagreed with the tokenizer on a sample; encoding again with the tokenizer "
            "alone (set %s=0 to skip the fast engine)", FAST_BPE_VARIABLE)
        return _encode_conversations(tokenizer, settings, conversations, num_proc, progress, False)


def _encode_conversations(tokenizer: Any, settings: EncodeSettings, conversations: list[list[dict[str, Any]]],
                          num_proc: int, progress: bool, use_fast: bool) -> Encoded:
    chunks = [conversations[i:i + CHUNK] for i in range(0, len(conversations), CHUNK)]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(conversations), desc="format", unit="conv", disable=not progress, mininterval=0.5)
    try:
        results = []
        if num_proc > 1 and len(conversations) >= MIN_PARALLEL:
            import multiprocessing as mp

            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            ctx = mp.get_context(method)
            previous = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # no Rust thread pool across fork
            import gc

            global _INHERITED
            if method == "fork":  # a task is a range of the inherited list, not 256 pickled conversations
                _INHERITED = conversations
                tasks: list = [(i, i + CHUNK) for i in range(0, len(conversations), CHUNK)]
            else:
                tasks = chunks
            gc.freeze()  # the workers' garbage collector does not walk the parent's objects (rows, conversations)
            try:
                pool = ctx.Pool(num_proc, initializer=_init_worker, initargs=(tokenizer, settings, use_fast))
            finally:
                gc.unfreeze()
                _INHERITED = []
            try:
                with pool:
                    for result, chunk in zip(pool.imap(_work, tasks), chunks):
                        results.append(result)
                        bar.update(len(chunk))
            finally:
                if previous is None:
                    os.environ.pop("TOKENIZERS_PARALLELISM", None)
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = previous
        else:
            backend, lengths, fast = _engines(tokenizer, use_fast)

            def run_all():
                for chunk in chunks:
                    results.append(encode_chunk(tokenizer, settings, chunk, backend, lengths, fast))
                    bar.update(len(chunk))

            _off_main_thread(run_all)
    finally:
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
